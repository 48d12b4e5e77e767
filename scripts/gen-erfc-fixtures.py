#!/usr/bin/env python3
"""Writes test/fixtures/erfc/mpmath.json: erfc(x) to 40 digits (mpmath) at float64 points where
1 - erf(x) cancels (0.5 <= x < 3), around the switch points of src/kernels/mathfns.ts and in the
far tail, for test/torch-agreement.test.ts. Run: /usr/bin/python3 scripts/gen-erfc-fixtures.py"""
import json
import os
import random

import mpmath

mpmath.mp.dps = 40
random.seed(15)
xs = [0.25, 0.4999, 0.5, 0.5625, 1.0, 1.6226, 1.8743, 2.4999, 2.5, 2.9999, 3.0, 3.05, 4.2, 5.5, 10.0, 26.5]
xs += [random.uniform(0.5, 3.0) for _ in range(40)]
# the fixtures hold the float64 x (repr round-trips) and erfc(x) rounded once to float64
cases = [{"x": x, "erfc": float(mpmath.erfc(mpmath.mpf(x)))} for x in xs]
out = os.path.join(os.path.dirname(__file__), "..", "test", "fixtures", "erfc", "mpmath.json")
with open(out, "w") as f:
    json.dump({"generator": "scripts/gen-erfc-fixtures.py (mpmath, 40 digits)", "cases": cases}, f, indent=1)
    f.write("\n")
