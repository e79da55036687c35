"""The reader process for the concurrency test: queries until told to stop."""

import json
import os
import sys
import time
import traceback

import kernelflow as kf

if __name__ == "__main__":
    stop, out = sys.argv[1], sys.argv[2]
    counts, errors = [], []
    while not os.path.exists(stop):
        try:
            n = kf.sql("SELECT count(*) AS n FROM events")["n"][0]
            kf.sql("SELECT status, count(*) FROM runs GROUP BY status")
            counts.append(int(n))
        except Exception:  # noqa: BLE001 - any error at all is what the test looks for
            errors.append(traceback.format_exc())
        time.sleep(0.01)
    with open(out, "w") as f:
        json.dump({"counts": counts, "errors": errors}, f)
