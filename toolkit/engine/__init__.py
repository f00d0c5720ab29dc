"""Running a model over inputs: the detector facade, the one batch routine, plans, threads and processes."""
