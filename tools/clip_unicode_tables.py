#!/usr/bin/env python3
"""Derive the Unicode difference tables of engine/clip_unicode.c (dev-time only).

loco's CLIP tokenizer uses utf8proc for Unicode data; the reference (transformers' CLIPTokenizer,
backed by the Rust `tokenizers` library) uses other Unicode versions: Oniguruma and Rust's
char::to_lowercase are newer than the system utf8proc, and the NFC normaliser
(unicode-normalization-alignments) is older. This script asks both sides about every code point
and prints the differences as C table rows:

  class   code points the tokenizers split regex sees as \\p{L} / \\p{N} that utf8proc leaves
          unassigned
  lower   single-code-point lowercase mappings utf8proc lacks
  ccc0    combining marks the tokenizers NFC treats as starters (combining class 0)
  nodec   characters whose canonical decomposition the tokenizers NFC does not know

Usage: python tools/clip_unicode_tables.py [path/to/libutf8proc.so]
"""
import ctypes
import ctypes.util
import sys

from tokenizers import Regex, normalizers, pre_tokenizers

# The White_Space property, as clip_unicode.c hard-codes it (stable since Unicode 6.2).
WHITE_SPACE = set(range(0x9, 0xE)) | {0x20, 0x85, 0xA0, 0x1680} | set(range(0x2000, 0x200B)) | {
    0x2028, 0x2029, 0x202F, 0x205F, 0x3000}

CLIP_SPLIT = r"""<\|startoftext\|>|<\|endoftext\|>|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+"""


class Utf8procProperty(ctypes.Structure):
    # the leading fields of utf8proc_property_t (utf8proc_propval_t is int16)
    _fields_ = [("category", ctypes.c_int16), ("combining_class", ctypes.c_int16)]


class Utf8proc:
    def __init__(self, path):
        self.lib = ctypes.CDLL(path)
        self.lib.utf8proc_category.restype = ctypes.c_int
        self.lib.utf8proc_tolower.restype = ctypes.c_int32
        self.lib.utf8proc_get_property.restype = ctypes.POINTER(Utf8procProperty)
        self.lib.utf8proc_decompose_char.restype = ctypes.c_ssize_t
        self.lib.utf8proc_decompose_char.argtypes = [ctypes.c_int32, ctypes.POINTER(ctypes.c_int32), ctypes.c_ssize_t,
                                                     ctypes.c_int, ctypes.POINTER(ctypes.c_int)]

    def category(self, cp):  # 0 = Cn, 1..5 = Lu Ll Lt Lm Lo, 9..11 = Nd Nl No
        return self.lib.utf8proc_category(cp)

    def combining_class(self, cp):
        return self.lib.utf8proc_get_property(cp).contents.combining_class

    def lower(self, cp):
        return self.lib.utf8proc_tolower(cp)

    def decomposition(self, cp):
        buf = (ctypes.c_int32 * 32)()
        last = ctypes.c_int(0)
        n = self.lib.utf8proc_decompose_char(cp, buf, 32, 1 << 3, ctypes.byref(last))  # UTF8PROC_DECOMPOSE
        return [buf[i] for i in range(n)]


def ranges(cps):
    out = []
    for cp in sorted(cps):
        if out and out[-1][1] == cp - 1:
            out[-1][1] = cp
        else:
            out.append([cp, cp])
    return out


def main():
    path = sys.argv[1] if len(sys.argv) > 1 else (ctypes.util.find_library("utf8proc") or "libutf8proc.so")
    u = Utf8proc(path)
    split = pre_tokenizers.Split(Regex(CLIP_SPLIT), behavior="removed", invert=True)
    low = normalizers.Lowercase()
    nfc = normalizers.NFC()
    cps = [cp for cp in range(0x110000) if not 0xD800 <= cp < 0xE000]

    new_l, new_n, lower = [], [], []
    for cp in cps:
        c = chr(cp)
        p1 = split.pre_tokenize_str("a" + c)
        p2 = split.pre_tokenize_str(c + c)
        tok = "S" if (len(p1) == 1 and p1[0][0] == "a") else "L" if len(p1) == 1 else "N" if len(p2) == 2 else "P"
        if (tok == "S") != (cp in WHITE_SPACE):
            raise SystemExit(f"U+{cp:04X}: \\s disagrees with the White_Space list")
        cat = u.category(cp)
        mine = "L" if 1 <= cat <= 5 else "N" if 9 <= cat <= 11 else "P"
        if tok in "LN" and mine != tok:
            if cat != 0:
                raise SystemExit(f"U+{cp:04X}: tokenizers {tok}, utf8proc category {cat}: not a version gap")
            (new_l if tok == "L" else new_n).append(cp)
        lw = low.normalize_str(c)
        if cp != 0x130 and lw != chr(u.lower(cp)):
            if len(lw) != 1 or u.lower(cp) != cp:
                raise SystemExit(f"U+{cp:04X}: lowercase {lw!r} vs utf8proc U+{u.lower(cp):04X}")
            lower.append((cp, ord(lw)))

    ccc0 = []
    for cp in cps:
        ccc = u.combining_class(cp)
        if ccc <= 1:
            continue
        # canonical ordering moves a mark of class > 1 behind U+0334 (class 1); a mark the
        # tokenizers NFC leaves in place is a starter (class 0) to it
        s = "a" + chr(cp) + "\u0334"
        if nfc.normalize_str(s) == s:
            ccc0.append(cp)
    for cp in cps:
        if u.combining_class(cp) == 1 and cp not in ccc0:
            s = "q\u0301" + chr(cp)  # no precomposed q-acute: only reordering can change this
            if nfc.normalize_str(s) == s:
                ccc0.append(cp)
    nodec = []
    for cp in cps:
        d = u.decomposition(cp)
        if len(d) > 1 or (len(d) == 1 and d[0] != cp):
            whole = nfc.normalize_str(chr(cp))
            parts = nfc.normalize_str("".join(map(chr, d)))
            if whole != parts:
                nodec.append(cp)

    print("/* class L */", ", ".join(f"{{0x{a:X}, 0x{b:X}}}" for a, b in ranges(new_l)))
    print("/* class N */", ", ".join(f"{{0x{a:X}, 0x{b:X}}}" for a, b in ranges(new_n)))
    deltas = []  # (first, last, lower - upper) over runs with one offset
    for cp, lw in lower:
        if deltas and deltas[-1][1] == cp - 1 and deltas[-1][2] == lw - cp:
            deltas[-1][1] = cp
        else:
            deltas.append([cp, cp, lw - cp])
    print("/* lower */", ", ".join(f"{{0x{a:X}, 0x{b:X}, {d}}}" for a, b, d in deltas))
    print("/* ccc0 */", ", ".join(f"{{0x{a:X}, 0x{b:X}}}" for a, b in ranges(ccc0)))
    print("/* nodec */", ", ".join(f"0x{a:X}" for a in nodec))


if __name__ == "__main__":
    main()
