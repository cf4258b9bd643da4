#!/usr/bin/env python3
"""Writes a GGUF file with a real model's header and random tensor bytes, for speed tests.

    random_weights.py SOURCE SIZE OUT

SOURCE holds at least the model's header (its metadata, vocabulary and tensor index: the first
few MB of the real file); SIZE is the real file's size in bytes. OUT gets the header followed
by random bytes below 0x3c up to SIZE, so every f16 and f32 in it is finite. Both hone and
llama.cpp read such a file as they read the real one, at the same speed, without moving a
gigabyte of weights to the machine that measures them.
"""
import os
import struct
import sys

# Sizes of GGUF metadata value types 0..12 (8 = string and 9 = array are read apart).
FIXED = {0: 1, 1: 1, 2: 2, 3: 2, 4: 4, 5: 4, 6: 4, 7: 1, 10: 8, 11: 8, 12: 8}


def tensor_data_offset(f):
    """Where the tensor data begins: after the header, at the file's alignment."""

    def read(fmt):
        return struct.unpack("<" + fmt, f.read(struct.calcsize("<" + fmt)))[0]

    def string():
        return f.read(read("Q"))

    def skip(kind):
        if kind == 8:
            string()
        elif kind == 9:
            inner, count = read("I"), read("Q")
            for _ in range(count):
                skip(inner)
        else:
            f.seek(FIXED[kind], 1)

    if f.read(4) != b"GGUF":
        sys.exit("not a GGUF file")
    read("I")  # version
    tensors, kvs = read("Q"), read("Q")
    alignment = 32
    for _ in range(kvs):
        key, kind = string(), read("I")
        if key == b"general.alignment" and kind == 4:
            alignment = read("I")
        else:
            skip(kind)
    for _ in range(tensors):
        string()
        f.seek(8 * read("I"), 1)  # dimensions
        f.seek(4 + 8, 1)  # type, offset
    return (f.tell() + alignment - 1) // alignment * alignment


def main():
    source, size, out = sys.argv[1], int(sys.argv[2]), sys.argv[3]
    with open(source, "rb") as f:
        start = tensor_data_offset(f)
        f.seek(0)
        header = f.read(start)
    if len(header) != start or start > size:
        sys.exit(f"{source} holds {len(header)} bytes of a {start}-byte header")
    below = bytes(i % 0x3C for i in range(256))
    with open(out, "wb") as o:
        o.write(header)
        left = size - start
        while left:
            n = min(left, 1 << 24)
            o.write(os.urandom(n).translate(below))
            left -= n


if __name__ == "__main__":
    main()
