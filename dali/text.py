"""What text from a node may look like on a terminal, and in the few places it is read as a number.

A node runs a kernel under development and whatever a user put on it: its console, a program's
output, a panic's line or an ndctl reply can hold any byte. Printed as it is, an escape sequence
moves the cursor, retitles the window or hides a line; inside dali's one-line messages, a line
break makes two. Everything a node said that dali prints, or puts in a DaliError, goes through
visible() or visible_line(); files kept for a machine (a run's report.md, run.json, the consoles
under state/) keep the bytes as they came, and junit.xml gets only what XML can hold (xml_safe).
"""

from __future__ import annotations

import re


def visible(text: str) -> str:
    """A node's output as it may reach a terminal: lines and tabs as they are, every other
    control character shown as cat -v shows it (ESC as ^[, a carriage return as ^M), and a
    Unicode line separator or control as \\uXXXX. A program on a node, running a kernel under
    development, must not be able to move the cursor, retitle the window or hide a line."""
    if text.isprintable():
        return text
    out = []
    for c in text:
        if c in "\n\t" or c.isprintable():
            out.append(c)
        else:
            out.append(_shown(c))
    return "".join(out)


def _shown(c: str) -> str:
    if ord(c) < 0x20 or c == "\x7f":
        return "^" + chr(ord(c) ^ 0x40)
    return f"\\u{ord(c):04x}"


def visible_line(text: str) -> str:
    """What a node said, inside one line of dali's (a DaliError's message, a progress line):
    visible, its lines joined by ' | ' (a program's stderr has several, and one of dali's
    messages is one line whatever a node printed)."""
    return " | ".join(filter(None, (visible(line).strip() for line in text.splitlines())))


# XML 1.0 (section 2.2) holds tabs, line breaks and printable characters; no other control
# character, not even escaped, so ElementTree would write a junit.xml no CI system could read.
_NOT_XML = re.compile("[^\t\n\r\x20-\ud7ff\ue000-\ufffd\U00010000-\U0010ffff]")


def xml_safe(text: str) -> str:
    """A node's text as XML can hold it: what XML cannot, shown as visible() shows it; the rest,
    escape sequences of other kinds included, as it came."""
    return _NOT_XML.sub(lambda m: _shown(m.group()), text)


def is_digits(text: str) -> bool:
    """Whether text is a whole number written with 0-9. str.isdigit also takes '²' or '٣',
    which int() refuses or reads as a number nobody typed."""
    return text.isascii() and text.isdigit()
