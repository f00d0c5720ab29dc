"""Memory of listing a prefix of N keys in a store, against moto's S3 server on 127.0.0.1: what streaming the
listing holds (``list_objects``, each entry dropped once used), what a run keeps of it (``list_sources``: one
``InputRef`` per image), and what fsspec's own ``find`` holds (the whole listing at once). Peak bytes traced by
``tracemalloc`` (Python allocations; the client's own buffers included).

    python scripts/listing_memory.py --keys 20000
"""

from __future__ import annotations

import argparse
import gc
import os
import sys
import tracemalloc
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def peak(fn: Callable[[], Any]) -> tuple[int, Any]:
    gc.collect()
    tracemalloc.start()
    out = fn()
    _, top = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    return top, out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--keys", type=int, default=20000)
    args = ap.parse_args()
    from tests.helpers import s3

    with s3.moto_server() as env:
        os.environ.update(env)
        s3.fresh_clients()
        fs = s3.filesystem()
        fs.mkdir("listing")
        names = {f"listing/images/site{i % 50:02d}/{i:08d}.jpg": b"x" for i in range(args.keys)}
        for start in range(0, args.keys, 2000):
            fs.pipe(dict(list(names.items())[start:start + 2000]))
        from toolkit.io.sources import list_sources
        from toolkit.io.store import list_objects

        streamed, n = peak(lambda: sum(1 for _ in list_objects("s3://listing/images/")))
        kept, sources = peak(lambda: list_sources("s3://listing/images/"))
        fs.invalidate_cache()
        found, listing = peak(lambda: fs.find("listing/images", detail=True))
        assert n == len(sources) == len(listing) == args.keys
        print(f"| {args.keys} keys | streamed (list_objects) | {streamed / 2**20:.1f} MB | "
              f"{streamed / args.keys:.0f} B/key |")
        print(f"| | kept by a run (list_sources) | {kept / 2**20:.1f} MB | {kept / args.keys:.0f} B/key |")
        print(f"| | fsspec find(detail=True) | {found / 2**20:.1f} MB | {found / args.keys:.0f} B/key |")


if __name__ == "__main__":
    main()
