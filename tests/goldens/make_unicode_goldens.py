#!/usr/bin/env python3
"""Writes py311_lower.txt: Python 3.11's str.lower() (Unicode 14) of every code point it changes,
one line each: the code point, then the code points of its lower-case form, in hex.

    python3.11 tests/goldens/make_unicode_goldens.py

The metrics follow Python 3.11's string methods (see src/metric/text.rs); this pins lowercasing
against Rust's newer Unicode tables.
"""
import os
import sys
import unicodedata

assert sys.version_info[:2] == (3, 11), "run with Python 3.11 (Unicode 14)"
HERE = os.path.dirname(os.path.abspath(__file__))
with open(os.path.join(HERE, "py311_lower.txt"), "w") as f:
    f.write(f"# Python {sys.version.split()[0]} str.lower(), Unicode {unicodedata.unidata_version}\n")
    for c in range(0x110000):
        if 0xD800 <= c <= 0xDFFF:
            continue
        low = chr(c).lower()
        if low != chr(c):
            f.write("%X %s\n" % (c, " ".join("%X" % ord(x) for x in low)))

# The `regex` module's \p{P}, \p{S} and \p{N} (sacrebleu's intl tokenizer), as code point ranges:
# src/metric/data/intl_classes.txt, one class a line ("P 21-23 25-2A …", hex).
import regex  # noqa: E402

with open(os.path.join(HERE, "..", "..", "src", "metric", "data", "intl_classes.txt"), "w") as f:
    f.write(f"# regex {regex.__version__}: \\p{{P}}, \\p{{S}}, \\p{{N}} for sacrebleu's intl tokenizer (tests/goldens/make_unicode_goldens.py)\n")
    for cls in "PSN":
        pat = regex.compile(r"\p{%s}" % cls)
        ranges = []
        for c in range(0x110000):
            if 0xD800 <= c <= 0xDFFF or not pat.match(chr(c)):
                continue
            if ranges and ranges[-1][1] == c - 1:
                ranges[-1][1] = c
            else:
                ranges.append([c, c])
        f.write(cls + " " + " ".join("%X" % a if a == b else "%X-%X" % (a, b) for a, b in ranges) + "\n")

# What Python 3.11's str.lower() sees around a capital sigma (final or not): the code points it
# skips as case-ignorable, and those it counts as cased (and not case-ignorable), as ranges:
# src/metric/data/py311_sigma.txt ("I …" and "C …", hex). unicodedata does not expose the
# properties, so each character is classified by lowering it next to a sigma.
with open(os.path.join(HERE, "..", "..", "src", "metric", "data", "py311_sigma.txt"), "w") as f:
    f.write(f"# Python {sys.version.split()[0]} (Unicode {unicodedata.unidata_version}) final-sigma classes: I case-ignorable, C cased (tests/goldens/make_unicode_goldens.py)\n")
    classes = {"I": [], "C": []}
    for c in range(0x110000):
        if 0xD800 <= c <= 0xDFFF:
            continue
        ch = chr(c)
        cased = (ch + "\u03a3").lower()[-1] == "\u03c2"  # cased and not case-ignorable
        ignorable = not cased and ("A" + ch + "\u03a3").lower()[-1] == "\u03c2"
        for cls, yes in (("C", cased), ("I", ignorable)):
            if not yes:
                continue
            ranges = classes[cls]
            if ranges and ranges[-1][1] == c - 1:
                ranges[-1][1] = c
            else:
                ranges.append([c, c])
    for cls in "IC":
        f.write(cls + " " + " ".join("%X" % a if a == b else "%X-%X" % (a, b) for a, b in classes[cls]) + "\n")
