"""Helpers shared by the fixture generators in scripts/.

JSON has no NaN or infinities: the generators write them as the strings "nan", "inf" and "-inf",
which test/helpers/torch-fixture.ts decodes.
"""
import math


def enc_number(v):
    """A value as the fixtures hold it: a non-finite float as "nan", "inf" or "-inf", anything else as it is."""
    if isinstance(v, float) and not math.isfinite(v):
        return "nan" if math.isnan(v) else ("inf" if v > 0 else "-inf")
    return v


def enc_tensor(t):
    """A tensor as {"shape": [...], "data": [...]}, its row-major values through enc_number."""
    return {"shape": list(t.shape), "data": [enc_number(v) for v in t.detach().reshape(-1).tolist()]}
