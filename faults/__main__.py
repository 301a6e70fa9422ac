"""python -m faults: run random schedules (or replay one) and report violations."""

from __future__ import annotations

import argparse
import logging
import signal
import sys
import time
from multiprocessing import Pool, current_process

from faults.run import Sim, generate


def one(args: tuple[int, str]) -> tuple[int, list[str], int, int]:
    seed, base = args
    worker = (current_process()._identity or (0,))[0]  # each process its own database
    sim = Sim(generate(seed), with_db(base, 2 + worker))
    problems = sim.run()
    return seed, problems, sim.world.points, sim.world.crashes


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m faults", description=__doc__)
    ap.add_argument("--schedules", type=int, default=300, help="how many random schedules (default 300)")
    ap.add_argument("--first", type=int, default=1, help="seed of the first schedule (default 1)")
    ap.add_argument("--seed", type=int, help="replay this one schedule, with its details")
    ap.add_argument("--redis", help="a redis-server URL to use (default: start one on a free port)")
    ap.add_argument("--jobs", type=int, default=2, help="processes (each its own Redis database)")
    ap.add_argument("--cases", action="store_true", help="run the regression cases, with and without their hole")
    ap.add_argument("--case", help="run one regression case (by name), with details")
    ap.add_argument("--verbose", action="store_true")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.CRITICAL, format="%(message)s")
    # Stopped with SIGTERM, still stop the redis-server it started (the `finally` of server()).
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    from faults.redis import server

    with server(args.redis) as url:
        if args.cases or args.case:
            return _cases(url, args.case, args.verbose)
        if args.seed is not None:
            from faults.invariants import dump

            sim = Sim(generate(args.seed), url)
            problems = sim.run()
            if args.verbose or problems:
                print(dump(sim))
            for p in problems:
                print("VIOLATION", p)
            return 1 if problems else 0
        start, failed, points, crashes = time.time(), 0, 0, 0
        seeds = range(args.first, args.first + args.schedules)
        urls = [url] * len(seeds)
        with Pool(max(1, args.jobs)) as pool:
            for seed, problems, n, c in pool.imap_unordered(one, zip(seeds, urls, strict=True), chunksize=4):
                points, crashes = points + n, crashes + c
                if problems:
                    failed += 1
                    print(f"seed {seed}: {len(problems)} violation(s), replay: python -m faults --seed {seed}")
                    for p in problems[:5]:
                        print("   ", p)
        took = time.time() - start
        print(f"{args.schedules} schedules (seeds {args.first}..{args.first + args.schedules - 1}), {points} points, "
              f"{crashes} crashes injected: {failed} with violations, {took:.0f} s")  # fmt: skip
        return 1 if failed else 0


def _cases(url: str, only: str | None, verbose: bool) -> int:
    from faults.cases import cases, run_case

    bad = 0
    for case in cases():
        if only and case.name != only:
            continue
        fixed, sim_fixed = run_case(case, url, hole=False)
        holed, sim_holed = run_case(case, url, hole=True)
        caught = any(v.startswith(case.expect) for v in holed)
        ok = not fixed and caught
        bad += not ok
        print(f"{'ok  ' if ok else 'FAIL'} {case.name}: fixed {len(fixed)} violation(s); with the hole "
              f"{len(holed)}{' (expected ' + case.expect + ')' if not caught else ''}")  # fmt: skip
        if verbose or not ok:
            for v in fixed[:5]:
                print("     fixed:", v)
            for v in holed[:5]:
                print("     hole: ", v)
            print("     injected (fixed):", *sim_fixed.world.injected[:8], sep="\n       ")
            print("     injected (hole):", *sim_holed.world.injected[:8], sep="\n       ")
    return 1 if bad else 0


def with_db(url: str, db: int) -> str:
    if url.startswith("unix://"):
        return f"{url.partition('?')[0]}?db={db}"
    return f"{url.rsplit('/', 1)[0]}/{db}"


if __name__ == "__main__":
    sys.exit(main())
