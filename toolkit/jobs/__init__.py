"""What the CLI's commands do, as library functions: run, ray, val, export, info, bench."""
