"""LOINC code syntax: the check digit and the shape of a code.

A LOINC code is one to seven digits (no leading zero), a hyphen, and one check digit. Regenstrief
computes the check digit with the "Mod 10" algorithm (LOINC Users' Guide, "The LOINC Code
Identifier"): from the right of the base number, double every digit in an odd position (1st,
3rd, ...), add the digits of the doubled values and of the other digits, and take what is needed
to reach the next multiple of ten. It is the Luhn algorithm applied to the base number.

>>> loinc_check_digit("2160")
0
>>> loinc_check_digit("35668")
3
>>> is_valid_loinc("35668-3")
True
>>> is_valid_loinc("3665-3")
False
>>> is_valid_loinc("LP12345-6")
False
"""

from __future__ import annotations

import re

_LOINC = re.compile(r"[1-9][0-9]{0,6}-[0-9]")


def loinc_check_digit(base: str) -> int:
    """The Mod 10 check digit of a LOINC base number (the digits before the hyphen).

    >>> loinc_check_digit("12345")  # the Users' Guide's worked example
    5
    >>> loinc_check_digit("29463")
    7
    """
    if not base.isdigit() or not base.isascii():
        raise ValueError(f"a LOINC base number is digits only: {base!r}")
    total = 0
    for position, char in enumerate(reversed(base)):
        digit = int(char)
        if position % 2 == 0:  # 1st, 3rd ... digit from the right
            digit *= 2
        total += digit // 10 + digit % 10
    return (10 - total % 10) % 10


def is_valid_loinc(code: str) -> bool:
    """Whether ``code`` has the shape of a LOINC code and its check digit is right.

    >>> is_valid_loinc("14682-9"), is_valid_loinc("14682-8"), is_valid_loinc("14682")
    (True, False, False)
    """
    if _LOINC.fullmatch(code) is None:
        return False
    base, check = code.split("-")
    return loinc_check_digit(base) == int(check)
