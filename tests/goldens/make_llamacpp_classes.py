#!/usr/bin/env python3
"""Writes src/engine/data/llamacpp_classes.txt: the Unicode categories llama.cpp's tokenizer
splits text by (\\p{L}, \\p{N}, \\p{P}, \\p{S}, \\p{M}), as code point ranges, one class a line.

    python3 tests/goldens/make_llamacpp_classes.py PATH/TO/llama.cpp/src/unicode-data.cpp

llama.cpp generates its table from the Unicode data of its day and keeps it; the engine pins it
rather than take the regex crate's newer tables (Unicode 16 letters such as U+A7CB split
differently). The table is the same from llama-cpp-python 0.3.2 to 0.3.36 (the reference).
"""
import os
import re
import sys

FLAGS = {"N": 0x0002, "L": 0x0004, "M": 0x0010, "P": 0x0020, "S": 0x0040}
src = open(sys.argv[1]).read()
body = src[src.index("unicode_ranges_flags"):]
body = body[: body.index("};")]
starts = [(int(a, 16), int(b, 16)) for a, b in re.findall(r"\{0x([0-9A-F]+), 0x([0-9A-F]+)\}", body)]
out = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "src", "engine", "data", "llamacpp_classes.txt")
with open(out, "w") as f:
    f.write("# llama.cpp src/unicode-data.cpp categories: L N P S M as code point ranges, hex (tests/goldens/make_llamacpp_classes.py)\n")
    for cls, bit in FLAGS.items():
        ranges = []
        for i, (start, flags) in enumerate(starts):
            end = starts[i + 1][0] - 1 if i + 1 < len(starts) else 0x10FFFF
            if flags & bit:
                if ranges and ranges[-1][1] == start - 1:
                    ranges[-1][1] = end
                else:
                    ranges.append([start, end])
        f.write(cls + " " + " ".join("%X" % a if a == b else "%X-%X" % (a, b) for a, b in ranges) + "\n")
