"""text8's alphabet: normalise any text into it, encode it as tokens, check it.

text8 (Mahoney, http://mattmahoney.net/dc/textdata.html) is Wikipedia text
filtered by ``wikifil.pl``: 27 symbols, the letters a..z and the space. The
character-level part of that filter is, in order:

  1. upper-case ASCII letters become lower case (``tr/A-Z/a-z/``);
  2. each digit is spelled out as a word: 0 -> " zero ", 1 -> " one ", ...;
  3. every character outside a..z becomes a space, and runs of spaces collapse
     to one (``tr/a-z/ /cs``);
  4. (here) leading and trailing spaces are stripped.

Only ASCII letters count as letters (as in wikifil.pl): "é" becomes a space.
The markup removal that wikifil.pl does before this (XML, wiki links) is not
repeated here: it is for Wikipedia dumps, not for plain text.

Tokens: a..z -> 0..25, space -> 26 (``VOCAB_SIZE`` = 27); the mask id is 27.
"""

from __future__ import annotations

import re

import numpy as np

VOCAB_SIZE = 27
MASK_ID = VOCAB_SIZE
ALPHABET = "abcdefghijklmnopqrstuvwxyz "

_DIGIT_WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven",
                "eight", "nine")
_TRANSLATE = {ord(c): c.lower() for c in "ABCDEFGHIJKLMNOPQRSTUVWXYZ"}
_TRANSLATE.update({ord(str(d)): f" {w} " for d, w in enumerate(_DIGIT_WORDS)})
_NOT_LETTERS = re.compile(r"[^a-z]+")
_OUTSIDE_ALPHABET = re.compile(r"[^a-z ]")

# byte -> token (255 marks bytes outside the alphabet); token -> byte.
_ENCODE_TABLE = np.full(256, 255, np.uint8)
_ENCODE_TABLE[np.frombuffer(ALPHABET.encode("ascii"), np.uint8)] = np.arange(
    VOCAB_SIZE, dtype=np.uint8)
_DECODE_TABLE = np.frombuffer((ALPHABET + "_").encode("ascii"), np.uint8)


def normalize_text(text: str) -> str:
  """``text`` in text8's alphabet, the way wikifil.pl makes text8.

  >>> normalize_text("Hello, World! 42 times")
  'hello world four two times'
  """
  text = text.translate(_TRANSLATE)
  return _NOT_LETTERS.sub(" ", text).strip(" ")


def find_outside_alphabet(text: str) -> int:
  """Offset of the first character of ``text`` outside a..z and space, or -1."""
  match = _OUTSIDE_ALPHABET.search(text)
  return -1 if match is None else match.start()


def check_text8_alphabet(text: str, source: str) -> None:
  """Raises ValueError unless ``text`` holds only a..z and space.

  The message names ``source`` (a file name, say), the first offending
  character and its offset (in characters; every character before it is ASCII,
  so it is also the byte offset in a UTF-8 file).
  """
  offset = find_outside_alphabet(text)
  if offset >= 0:
    raise ValueError(
        f"{source}: character {text[offset]!r} at offset {offset} is outside "
        f"text8's alphabet (a-z and space). Turn normalisation on "
        f"(normalize=True) or clean the text first.")


def encode(text: str) -> np.ndarray:
  """uint8 [len(text)] tokens of a text8-alphabet string (a..z -> 0..25, space -> 26)."""
  offset = find_outside_alphabet(text)
  if offset >= 0:
    raise ValueError(
        f"cannot encode {text[offset]!r} at offset {offset}: not in text8's "
        f"alphabet (a-z and space); normalise with normalize_text first.")
  return encode_bytes(text.encode("ascii"))


def encode_bytes(data: bytes) -> np.ndarray:
  """uint8 tokens of ASCII bytes in text8's alphabet; ValueError at the first other byte."""
  tokens = _ENCODE_TABLE[np.frombuffer(data, np.uint8)]
  bad = np.flatnonzero(tokens == 255)
  if bad.size:
    raise ValueError(
        f"byte {data[bad[0]:bad[0] + 1]!r} at offset {bad[0]} is outside "
        f"text8's alphabet (a-z and space)")
  return tokens


def decode(tokens) -> str:
  """The string of int tokens in [0, 27]; the mask id 27 shows as "_".

  Args:
    tokens: any integer array-like of shape [N].
  """
  tokens = np.asarray(tokens)
  if tokens.ndim != 1:
    raise ValueError(f"decode takes a 1-D token array, got shape {tokens.shape}")
  if tokens.size and (tokens.min() < 0 or tokens.max() > MASK_ID):
    raise ValueError(
        f"tokens must lie in [0, {MASK_ID}] (27 = mask), got values in "
        f"[{tokens.min()}, {tokens.max()}]")
  return _DECODE_TABLE[tokens.astype(np.intp)].tobytes().decode("ascii")
