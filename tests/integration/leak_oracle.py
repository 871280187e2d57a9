#!/usr/bin/env python3
"""Leak-oracle fuzzer for pgcloak's masking (issue 17).

Canary customers (with orders and payments) whose protected values are
unique markers are planted directly in PostgreSQL as the superuser. A
seeded grammar then generates statements over every leak class of
MASKING-THREATS.md and runs them as the masked logins `analyst` and
`support` through pgcloak, over a raw v3 client (pgwire.py) that records
every byte pgcloak sends back. Three oracles:

  * marker scan: no hidden part of a canary value, nor a transformation of
    one (reversed, case-changed, hex, base64, md5/sha256 of it, digits with
    separators removed, to_hex of the number, a parse tree's datum bytes,
    the date in every DateStyle), and none of the mask key's derived HMAC
    pads, may appear in any byte: rows, errors and notices (every field),
    ParameterStatus, COPY data, RowDescription, notifications. An "echo"
    token that a statement prints only when a predicate on the raw value
    holds turns predicate oracles into markers too.
  * twin differential: per role, canaries A, B and D where B differs from
    A only in what the role's masks hide (and is longer, and sorts after D),
    and D equals A. A statement templated on A's id must give exactly the
    same bytes with B's id (ids normalised): a difference means its result
    depends on hidden values (ordering, predicates, errors, sort sizes in
    trace_sort, ...).
  * output-masking differential: a statement that output masking accepts
    (one protected table, plain columns, WHERE/ORDER BY/LIMIT on unprotected
    columns) must give byte-identical rows over the simple protocol (masked
    by pgcloak in C++), wrapped as `SELECT * FROM (q) s` and over the
    extended protocol (both masked in SQL).

Usable as a library (test_leak_oracle.py) and as a CLI for long passes:

    /usr/bin/python3 tests/integration/leak_oracle.py --minutes 60 --seed 1234

The CLI starts its own PostgreSQL 15 cluster and pgcloak ($PGCLOAK_BIN), as
the integration fixtures do. A finding prints the seed, role and program
index; `--replay ROLE:INDEX` reruns that one program.
"""
from __future__ import annotations

import argparse
import base64
import datetime as dt
import hashlib
import hmac
import json
import os
import random
import re
import socket
import struct
import sys
import threading
import time
from dataclasses import dataclass, field

HERE = os.path.dirname(os.path.abspath(__file__))
# Twin and differential runs compare results over the canary rows; each
# role's twin check rewrites its own twin row A, so roles running in
# parallel take turns for those programs.
COMPARE_LOCK = threading.Lock()
if HERE not in sys.path:
    sys.path.insert(0, HERE)

import pgwire  # noqa: E402

LEAK_DB = "shop_leak"
MASKED_ROLES = ("support", "analyst")
ALPHA = "bcdfghjkmnpqrstvwxz"          # marker tokens: consonants, no words
CANARY_MIN, CANARY_MAX = 990000, 990999
PROTECTED_TEXT = ("email", "phone", "ssn", "card_number", "address", "notes", "full_name")
PROTECTED = PROTECTED_TEXT + ("birth_date",)
VIEW_COLS = ("id", "full_name", "email", "phone")
TWIN_IDS = {"support": (990101, 990102, 990103), "analyst": (990201, 990202, 990203)}
STANDALONE_IDS = (990301, 990302, 990303, 990304)
ENC_LEADS = {  # client-only encodings: lead bytes whose second byte may be 0x5C
    "SJIS": (b"\x83", b"\x95", b"\x94"), "SHIFT_JIS_2004": (b"\x83", b"\x95"),
    "BIG5": (b"\xa4", b"\xb3"), "GBK": (b"\xbf", b"\x81", b"\xd5"), "GB18030": (b"\xbf", b"\x81"),
    "UHC": (b"\x81", b"\xb0"), "JOHAB": (b"\x88", b"\x8c", b"\x90"),
}
ENC_ALIASES = {"SJIS": ("SJIS", "sjis", "Shift_JIS", "MSKANJI", "ShiftJIS", "WIN932", "win932"),
               "SHIFT_JIS_2004": ("SHIFT_JIS_2004", "shift_jis_2004"),
               "BIG5": ("BIG5", "big5", "WIN950", "Big5"),
               "GBK": ("GBK", "gbk", "WIN936", "CP936"), "GB18030": ("GB18030", "gb18030"),
               "UHC": ("UHC", "uhc", "WIN949"), "JOHAB": ("JOHAB", "johab")}


# =============================================================================================
# Canaries


def _tok(rng: random.Random, n: int = 10, first: str | None = None) -> str:
    s = "".join(rng.choice(ALPHA) for _ in range(n))
    return (first + s[1:]) if first else s


def _digits(rng: random.Random, n: int, first: str | None = None) -> str:
    s = "".join(rng.choice("0123456789") for _ in range(n))
    if first is not None:
        s = first + s[1:]
    elif s[0] == "0":
        s = "7" + s[1:]
    return s


@dataclass
class Canary:
    id: int
    group: str | None  # "support"/"analyst" twin group, or None
    twin: str | None   # "A", "B", "D"
    full_name: str
    loc: str           # email local part
    dom: str           # email domain label (domain is dom + ".example")
    phone: str
    ssn: str
    card: str
    birth: dt.date
    street: tuple[str, str]  # the two tokens of the address
    address: str
    note_free: str     # free text token of notes (visible to support)
    note_loc: str
    note_dom: str
    note_phone: str
    note_card: str
    note_ssn: str
    notes: str
    pay_cards: tuple[str, str]
    echo: str          # printed only by predicate oracles that saw the raw value

    @property
    def email(self) -> str:
        return f"{self.loc}@{self.dom}.example"

    def row(self) -> dict:
        return dict(id=self.id, full_name=self.full_name, email=self.email, phone=self.phone, ssn=self.ssn,
                    card_number=self.card, birth_date=self.birth, address=self.address, notes=self.notes,
                    created_at="2024-06-01 12:00:00+00")


def _phone(rng, first="5", n_hidden=None) -> str:
    d = _digits(rng, 10, first)
    return f"+1-{d[:3]}-{d[3:6]}-{d[6:]}"


def _card(d: str, sep: str = "-") -> str:
    return sep.join(d[i:i + 4] for i in range(0, 16, 4))


def _ssn(d: str) -> str:
    return f"{d[:3]}-{d[3:5]}-{d[5:9]}"


def _notes(free, loc, dom, phone, card, ssn) -> str:
    return (f"Note {free} called from {phone}, wrote from {loc}@{dom}.example, "
            f"card {card}, ssn {ssn}.")


def _fresh(rng, cid, group=None, twin=None) -> Canary:
    t = lambda n=10: _tok(rng, n)  # noqa: E731
    street = (t(), t())
    note = dict(free=t(), loc=t(), dom=t(8), phone=_phone(rng), card=_card(_digits(rng, 16, "4")),
                ssn=_ssn(_digits(rng, 9, "3")))
    bd = dt.date(rng.randint(1901, 1935), rng.randint(3, 10), rng.randint(10, 25))
    return Canary(
        id=cid, group=group, twin=twin, full_name=f"{t().title()} {t().title()}", loc=t(), dom=t(8),
        phone=_phone(rng), ssn=_ssn(_digits(rng, 9, "4")), card=_card(_digits(rng, 16, "5")), birth=bd,
        street=street, address=f"{rng.randint(100, 999)} {street[0].title()} Street, {street[1].title()}ville",
        note_free=note["free"], note_loc=note["loc"], note_dom=note["dom"], note_phone=note["phone"],
        note_card=note["card"], note_ssn=note["ssn"],
        notes=_notes(note["free"], note["loc"], note["dom"], note["phone"], note["card"], note["ssn"]),
        pay_cards=(_card(_digits(rng, 16, "5")), _card(_digits(rng, 16, "6"))), echo=t(12))


def _with(c: Canary, **kw) -> Canary:
    d = dict(c.__dict__)
    d.update(kw)
    if any(k.startswith("note_") for k in kw):
        d["notes"] = _notes(d["note_free"], d["note_loc"], d["note_dom"], d["note_phone"], d["note_card"],
                            d["note_ssn"])
    return Canary(**d)


def _keep_last(rng, value: str, keep: int, first: str) -> str:
    """value with every digit replaced at random except the last `keep`
    digits; the first digit becomes `first` (to order the twins)."""
    digits = [i for i, ch in enumerate(value) if ch.isdigit()]
    out = list(value)
    hide = digits[:len(digits) - keep]
    for k, i in enumerate(hide):
        out[i] = first if k == 0 else rng.choice("0123456789")
    return "".join(out)


def make_canaries(seed: int = 17) -> list[Canary]:
    """The canaries (deterministic: the same seed plants the same rows).

    Twin groups per masked role: A, B (differs from A only where that role's
    masks hide, with longer values that sort after A's) and D (equal to A).
    Then standalone canaries with every value random."""
    rng = random.Random(seed)
    out: list[Canary] = []
    # support: full_name, email's first character and domain, the phone's
    # last 2 characters and length, the card's last 4 digits and format, the
    # birth year and the non-pattern text of notes are visible.
    a_id, b_id, d_id = TWIN_IDS["support"]
    a = _fresh(rng, a_id, "support", "A")
    a = _with(a, loc=a.loc[0] + "b" + a.loc[2:], phone="+1-2" + a.phone[4:], ssn="1" + a.ssn[1:],
              card="1" + a.card[1:], birth=a.birth.replace(month=3, day=11),
              note_loc="b" + a.note_loc[1:])
    b = _with(a, id=b_id, twin="B", loc=a.loc[0] + "z" + _tok(rng, 3000), phone="+1-9" + _keep_last(rng, a.phone[4:], 2, "7"),
              ssn="9" + _ssn(_digits(rng, 9))[1:] + "-" + _digits(rng, 30), card=_keep_last(rng, a.card, 4, "9"),
              birth=a.birth.replace(month=11, day=27), street=(_tok(rng) + _tok(rng, 1500), _tok(rng)),
              note_loc="z" + _tok(rng, 3000), note_dom=_tok(rng, 60), note_phone=_phone(rng, "9"),
              note_card=_card(_digits(rng, 16, "9")), note_ssn=_ssn(_digits(rng, 9, "9")),
              pay_cards=(_keep_last(rng, a.pay_cards[0], 4, "9"), _keep_last(rng, a.pay_cards[1], 4, "9")),
              echo=_tok(rng, 12))
    b = _with(b, address=f"999 {b.street[0].title()} Street, {b.street[1].title()}ville")
    d = _with(a, id=d_id, twin="D", echo=_tok(rng, 12))
    out += [a, b, d]
    # analyst: only the email's hash is visible.
    a_id, b_id, d_id = TWIN_IDS["analyst"]
    a = _fresh(rng, a_id, "analyst", "A")
    a = _with(a, full_name="B" + a.full_name[1:], phone="+1-2" + a.phone[4:], ssn="1" + a.ssn[1:],
              card="1" + a.card[1:], birth=a.birth.replace(year=1905, month=3, day=11),
              note_free="b" + a.note_free[1:])
    rb = _fresh(rng, b_id, "analyst", "B")
    b = _with(rb, loc=a.loc, dom=a.dom, full_name="Z" + _tok(rng, 300) + " " + _tok(rng).title(),
              phone="+9-" + _digits(rng, 14), ssn="9" + rb.ssn[1:] + _digits(rng, 40),
              card="9" + rb.card[1:] + "-" + _digits(rng, 8), birth=dt.date(1933, 11, 27),
              note_free="z" + _tok(rng, 500))
    b = _with(b, address=f"999 {b.street[0].title()} Street, {b.street[1].title()}ville {_tok(rng, 2000)}")
    d = _with(a, id=d_id, twin="D", echo=_tok(rng, 12))
    out += [a, b, d]
    for cid in STANDALONE_IDS:
        out.append(_fresh(rng, cid))
    return out


def twin_ids(role: str) -> tuple[int, int, int]:
    return TWIN_IDS[role]


def plant_sql(canaries: list[Canary]) -> list[tuple[str, tuple]]:
    """(statement, params) to run as the superuser in the leak database."""
    stmts: list[tuple[str, tuple]] = [
        (f"DELETE FROM public.payments WHERE customer_id BETWEEN {CANARY_MIN} AND {CANARY_MAX}", ()),
        (f"DELETE FROM public.orders WHERE customer_id BETWEEN {CANARY_MIN} AND {CANARY_MAX}", ()),
        (f"DELETE FROM public.customers WHERE id BETWEEN {CANARY_MIN} AND {CANARY_MAX}", ()),
    ]
    for c in canaries:
        r = c.row()
        stmts.append(("INSERT INTO public.customers (id, full_name, email, phone, ssn, card_number, birth_date, "
                      "address, notes, created_at) VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s)",
                      (r["id"], r["full_name"], r["email"], r["phone"], r["ssn"], r["card_number"],
                       r["birth_date"], r["address"], r["notes"], r["created_at"])))
        for k in (1, 2):
            stmts.append(("INSERT INTO public.orders (id, customer_id, amount, status, created_at) "
                          "VALUES (%s, %s, %s, 'paid', %s)",
                          (c.id * 10 + k, c.id, 10 * k + 0.5, f"2025-03-1{k} 10:00:00+00")))
            stmts.append(("INSERT INTO public.payments (id, customer_id, card_number, amount, paid_at) "
                          "VALUES (%s, %s, %s, %s, %s)",
                          (c.id * 10 + k, c.id, c.pay_cards[k - 1], 10 * k + 0.5, f"2025-03-1{k} 12:00:00+00")))
    stmts.append(("ANALYZE public.customers, public.orders, public.payments", ()))
    return stmts


# =============================================================================================
# Key material: the derived keys' HMAC pads appear in SQL-masked statement text


def key_markers(master_key: str) -> list[tuple[str, str]]:
    """(needle, label) for the mask key's derived keys and their HMAC pads."""
    out = [(master_key.lower(), "key.master")]
    for label in ("pgcloak mask hash v1", "pgcloak mask pseudonym v1"):
        k = hmac.new(master_key.encode(), label.encode(), hashlib.sha256).digest()
        tag = "key." + label.split()[2]
        out.append((k.hex(), tag))
        for pad_byte, name in ((0x36, "ipad"), (0x5C, "opad")):
            pad = bytes(b ^ pad_byte for b in k) + bytes([pad_byte]) * 32
            hx = pad.hex()
            out.append((hx[:32], f"{tag}.{name}"))
            out.append((hx[24:64], f"{tag}.{name}"))
            # A parse tree prints a text Const's bytes in decimal (the hex
            # literal's characters) and a folded bytea Const's bytes signed.
            out.append((" ".join(str(ch) for ch in hx[:16].encode()), f"{tag}.{name}.datum"))
            out.append((" ".join(str(x if x < 128 else x - 256) for x in pad[:10]), f"{tag}.{name}.datum"))
            for o in range(3):
                b64 = base64.b64encode(b"\0" * o + pad[:32]).decode()
                out.append((b64[4 if o else 0:((o + 32) // 3) * 4], f"{tag}.{name}.b64"))
    return out


# =============================================================================================
# The scanner


def _trie_regex(words: list[bytes]) -> bytes:
    trie: dict = {}
    for w in words:
        node = trie
        for ch in w:
            node = node.setdefault(ch, {})
        node[-1] = True

    def emit(node) -> bytes:
        end = -1 in node
        alts = [re.escape(bytes([ch])) + emit(child) for ch, child in sorted((k, v) for k, v in node.items() if k != -1)]
        if not alts:
            return b""
        body = alts[0] if len(alts) == 1 else b"(?:" + b"|".join(alts) + b")"
        if end:
            return b"(?:" + body + b")?"
        return body
    return emit(trie)


def _b64_forms(s: bytes) -> list[str]:
    out = []
    for o in range(3):
        b64 = base64.b64encode(b"\0" * o + s).decode()
        piece = b64[4 if o else 0:((o + len(s)) // 3) * 4]
        if len(piece) >= 8:
            out.append(piece)
    return out


def _windows(s: str, n: int) -> list[str]:
    if len(s) <= n:
        return [s]
    return [s[i:i + n] for i in range(0, len(s) - n + 1)]


NONALNUM = bytes(b for b in range(256) if not (48 <= b <= 57 or 97 <= b <= 122))
DIGIT_SEP = re.compile(rb"(?<=\d)[ \-.()/]{1,2}(?=\d)")
MONTHS = ["jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec"]


@dataclass
class Needles:
    free: dict[str, str] = field(default_factory=dict)      # searched in the lowercased bytes
    compact: dict[str, str] = field(default_factory=dict)   # alnum: searched with non-alnum removed
    digits: dict[str, str] = field(default_factory=dict)    # in digit runs, separators removed
    bounded: dict[str, str] = field(default_factory=dict)   # exact, not next to [0-9a-z]

    def add_token(self, t: str, label: str, window: int | None = 7, hidden_from: int = 0) -> None:
        t = t.lower()
        forms = [t, t[::-1]]
        for w in (_windows(t[hidden_from:], window) if window else []):
            forms += [w, w[::-1]]
        for f in forms:
            if len(f) >= 7:
                self.compact.setdefault(f, label)
        for f in (t, t[::-1]):
            self.compact.setdefault(f.encode().hex(), label + ".hex")
            self.compact.setdefault(hashlib.md5(f.encode()).hexdigest(), label + ".md5")
            for b in _b64_forms(f.encode()):
                self.free.setdefault(b.lower(), label + ".b64")
            self.free.setdefault(" ".join(str(x) for x in f.encode()[:8]), label + ".datum")
            self.free.setdefault(",".join(str(x) for x in f.encode()[:8]), label + ".codes")
        up = t.upper().encode()
        self.compact.setdefault(up.hex(), label + ".hex")
        for b in _b64_forms(up) + _b64_forms(t.title().encode()):
            self.free.setdefault(b.lower(), label + ".b64")

    def add_digits(self, value: str, label: str, hidden: int | None = None) -> None:
        """value: the raw string; hidden: how many leading digits are hidden
        (None: all)."""
        d = re.sub(r"\D", "", value)
        if len(d) < 9:
            return
        h = d if hidden is None else d[:hidden]
        # Whole digit strings and the hidden part; windows of 10 only: an
        # 8-digit window matched timestamps ("2023-09-26 14" -> 2023092614).
        forms = {d, d[::-1], h, h[::-1]}
        if len(h) >= 12:
            forms |= set(_windows(h, 10)) | {w[::-1] for w in _windows(h, 10)}
        for f in forms:
            if len(f) >= 9:
                self.digits.setdefault(f, label)
        for f in (d, value):
            self.compact.setdefault(f.encode().hex(), label + ".hex")
            self.compact.setdefault(hashlib.md5(f.encode()).hexdigest(), label + ".md5")
            for b in _b64_forms(f.encode()):
                self.free.setdefault(b.lower(), label + ".b64")
        if len(d) <= 18:
            self.bounded.setdefault(format(int(d), "x"), label + ".to_hex")
            if len(h) >= 8 and len(d) <= 18 and int(d) >= 2 ** 31:
                pass

    def add_value(self, value: str, label: str) -> None:
        """Digests of the whole raw value (md5(col), sha256(col::bytea), ...)."""
        b = value.encode()
        self.compact.setdefault(hashlib.md5(b).hexdigest(), label + ".md5")
        self.compact.setdefault(hashlib.sha256(b).hexdigest()[:40], label + ".sha256")
        self.compact.setdefault(hashlib.sha512(b).hexdigest()[:40], label + ".sha512")
        self.compact.setdefault(hashlib.sha224(b).hexdigest()[:40], label + ".sha224")
        self.compact.setdefault(hashlib.md5(b[::-1]).hexdigest(), label + ".md5")
        self.compact.setdefault(hashlib.md5(value.upper().encode()).hexdigest(), label + ".md5")
        self.compact.setdefault(hashlib.md5(value.lower().encode()).hexdigest(), label + ".md5")

    def add_date(self, d: dt.date, label: str) -> None:
        y, m, day = f"{d.year:04d}", f"{d.month:02d}", f"{d.day:02d}"
        for f in (f"{y}-{m}-{day}", f"{m}/{day}/{y}", f"{day}/{m}/{y}", f"{day}.{m}.{y}", f"{m}-{day}-{y}",
                  f"{MONTHS[d.month - 1]} {day} {y}", f"{day} {MONTHS[d.month - 1]} {y}",
                  f"{MONTHS[d.month - 1]} {day} 00:00:00 {y}", f"{y}-{d.timetuple().tm_yday:03d}"):
            self.free.setdefault(f, label)
        jd = d.toordinal() + 1721425
        epoch = (d - dt.date(1970, 1, 1)).days * 86400
        for f in (f"{y}{m}{day}", str(jd), str(epoch), f"{y}{d.timetuple().tm_yday:03d}"):
            self.bounded.setdefault(f, label)
        self.add_value(f"{y}-{m}-{day}", label)


def role_needles(role: str, canaries: list[Canary], master_key: str | None) -> Needles:
    """Everything `role` must never receive, per its policy (see
    masking_fixture.MASKING): support sees names, an email's first
    character and domain, a phone's last 2 and a card's last 4 digits, the
    birth year and the text of notes around the patterns it redacts."""
    n = Needles()
    sup = role == "support"
    for c in canaries:
        p = f"c{c.id}."
        n.add_token(c.echo, p + "ECHO(predicate-oracle)", window=None)
        n.add_token(c.loc, p + "email.local", hidden_from=1 if sup else 0)
        n.add_value(c.email, p + "email")
        n.add_value(c.loc, p + "email.local")
        if not sup:
            n.add_token(c.dom, p + "email.domain")
            for t in c.full_name.lower().split():
                n.add_token(t, p + "full_name")
            n.add_value(c.full_name, p + "full_name")
            n.add_token(c.note_free, p + "notes.text")
        n.add_digits(c.phone, p + "phone", hidden=None if not sup else len(re.sub(r"\D", "", c.phone)) - 2)
        n.add_value(c.phone, p + "phone")
        n.add_digits(c.ssn, p + "ssn")
        n.add_value(c.ssn, p + "ssn")
        for label, card in (("card", c.card), ("payments.card", c.pay_cards[0]), ("payments.card", c.pay_cards[1])):
            nd = len(re.sub(r"\D", "", card))
            n.add_digits(card, p + label, hidden=nd - 4 if sup else None)
            n.add_value(card, p + label)
        n.add_date(c.birth, p + "birth_date")
        for t in c.street:
            n.add_token(t, p + "address")
        n.add_value(c.address, p + "address")
        n.add_value(c.notes, p + "notes")
        n.add_token(c.note_loc, p + "notes.email")
        n.add_token(c.note_dom, p + "notes.email")
        n.add_digits(c.note_phone, p + "notes.phone")
        n.add_digits(c.note_card, p + "notes.card")
        n.add_digits(c.note_ssn, p + "notes.ssn")
    if master_key:
        for needle, label in key_markers(master_key):
            if re.fullmatch(r"[0-9a-z]+", needle):
                n.compact.setdefault(needle, label)
            else:
                n.free.setdefault(needle.lower(), label)
    return n


class Scanner:
    def __init__(self, needles: Needles):
        self.needles = needles
        self.labels: dict[bytes, str] = {}
        # Long needles (a 400-character local part's hex) are cut to a prefix:
        # the prefix is as unique, and the trie regex stays shallow.
        for d in (needles.free, needles.compact, needles.digits):
            for k in list(d):
                if len(k) > 48:
                    d.setdefault(k[:48], d.pop(k))
        for d in (needles.free, needles.compact, needles.digits, needles.bounded):
            for k, v in d.items():
                self.labels.setdefault(k.encode(), v)

        def rx(words, bounded=False):
            if not words:
                return None
            p = _trie_regex(sorted({w.encode() for w in words}))
            if bounded:
                p = rb"(?<![0-9a-z])(?:" + p + rb")(?![0-9a-z])"
            return re.compile(p)
        self.rx_free = rx(needles.free)
        self.rx_compact = rx(needles.compact)
        self.rx_digits = rx(needles.digits)
        self.rx_bounded = rx(needles.bounded, bounded=True)

    def scan(self, data: bytes) -> list[tuple[str, bytes]]:
        """(label, matched bytes) for every marker form found in data."""
        if not data:
            return []
        low = data.lower()
        hits = []
        for r, hay in ((self.rx_free, low), (self.rx_bounded, low),
                       (self.rx_compact, low.translate(None, NONALNUM)),
                       (self.rx_digits, DIGIT_SEP.sub(b"", low) if self.rx_digits else b"")):
            if r is None:
                continue
            for m in r.finditer(hay):
                hits.append((self.labels.get(m.group(0), "?"), m.group(0)))
                if len(hits) > 20:
                    return hits
        return hits


# =============================================================================================
# Backend messages: parsing what was captured, and where a marker sat

_BIN_DECODERS = {
    1082: lambda b: (dt.date(2000, 1, 1) + dt.timedelta(days=struct.unpack("!i", b)[0])).isoformat()
    if len(b) == 4 else "",
    1114: lambda b: (dt.datetime(2000, 1, 1) + dt.timedelta(microseconds=struct.unpack("!q", b)[0])).isoformat()
    if len(b) == 8 else "",
    1184: lambda b: (dt.datetime(2000, 1, 1) + dt.timedelta(microseconds=struct.unpack("!q", b)[0])).isoformat()
    if len(b) == 8 else "",
    20: lambda b: str(struct.unpack("!q", b)[0]) if len(b) == 8 else "",
    23: lambda b: str(struct.unpack("!i", b)[0]) if len(b) == 4 else "",
}


def split_messages(data: bytes) -> tuple[list[tuple[bytes, bytes]], bytes]:
    """Backend messages in captured bytes; the first byte may be a single
    'S'/'N' answer to SSLRequest (never sent here). Returns (messages, rest)."""
    out = []
    i = 0
    while i + 5 <= len(data):
        t = data[i:i + 1]
        (ln,) = struct.unpack_from("!i", data, i + 1)
        if ln < 4 or i + 1 + ln > len(data):
            break
        out.append((t, data[i + 5:i + 1 + ln]))
        i += 1 + ln
    return out, data[i:]


def _fields(body: bytes) -> list[tuple[str, bytes]]:
    out = []
    i = 0
    while i < len(body) and body[i] != 0:
        end = body.find(b"\x00", i + 1)
        if end < 0:
            end = len(body)
        out.append((chr(body[i]), body[i + 1:end]))
        i = end + 1
    return out


def _row_desc(body: bytes) -> list[tuple[bytes, int, int, int, int]]:
    (n,) = struct.unpack_from("!h", body, 0)
    off = 2
    cols = []
    for _ in range(n):
        end = body.index(b"\x00", off)
        name = body[off:end]
        off = end + 1
        table, attnum, typ, size, mod, fmt = struct.unpack_from("!IhIhih", body, off)
        off += 18
        cols.append((name, table, attnum, typ, fmt))
    return cols


def message_parts(msgs: list[tuple[bytes, bytes]]):
    """(location, bytes) pieces to scan: each error/notice field, each
    ParameterStatus, each row, with binary cells of known types decoded."""
    desc = None
    for t, body in msgs:
        if t in (b"R", b"K", b"Z", b"1", b"2", b"3", b"n", b"s", b"I"):
            continue
        if t in (b"E", b"N"):
            fl = _fields(body)
            sev = next((v.decode("latin-1") for k, v in fl if k == "V"), None) or \
                next((v.decode("latin-1") for k, v in fl if k == "S"), "?")
            kind = "Error" if t == b"E" else "Notice"
            for k, v in fl:
                yield f"{kind}[{sev}].{k}", v
        elif t == b"S":
            k, _, v = body.partition(b"\x00")
            yield f"ParameterStatus[{k.decode('latin-1')}]", body
        elif t == b"T":
            try:
                desc = _row_desc(body)
            except Exception:
                desc = None
            yield "RowDescription", body
        elif t == b"D":
            yield "DataRow", body
            if desc:
                try:
                    cells = pgwire.parse_data_row(body)
                except Exception:
                    cells = []
                extra = []
                for (name, table, attnum, typ, fmt), v in zip(desc, cells):
                    if v is not None and fmt == 1 and typ in _BIN_DECODERS:
                        try:
                            extra.append(_BIN_DECODERS[typ](v))
                        except Exception:
                            pass
                if extra:
                    yield "DataRow(binary decoded)", "\n".join(extra).encode()
        elif t == b"d":
            yield "CopyData", body
        elif t == b"A":
            yield "NotificationResponse", body[4:]
        elif t == b"C":
            yield "CommandComplete", body
        else:
            yield f"message[{t.decode('latin-1')}]", body


def scan_capture(scanner: Scanner, data: bytes) -> list[tuple[str, str, bytes]]:
    """(location, label, matched) for every marker in the captured bytes."""
    msgs, rest = split_messages(data)
    hits = []
    for loc, piece in message_parts(msgs):
        for label, m in scanner.scan(piece):
            hits.append((loc, label, m))
    if rest:
        for label, m in scanner.scan(rest):
            hits.append(("trailing bytes", label, m))
    return hits


# =============================================================================================
# The wire: pgwire with every received byte recorded


class Wire(pgwire.PgWire):
    def __init__(self, host: str, port: int, timeout: float = 10.0):
        super().__init__(host, port, timeout=timeout)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.capture = bytearray()
        self.closed = False

    def recv_some(self, n: int = 65536, timeout: float | None = None) -> bytes:
        data = super().recv_some(n, timeout)
        self.capture += data
        return data

    def take(self) -> bytes:
        out = bytes(self.capture)
        self.capture.clear()
        return out


# Frontend message helpers (bytes-safe: statements may be in a client-only encoding)

def q(sql: bytes | str) -> bytes:
    b = sql.encode() if isinstance(sql, str) else sql
    return pgwire.msg(b"Q", b + b"\x00")


def parse_msg(sql: bytes | str, name: str = "", types: list[int] | None = None) -> bytes:
    b = sql.encode() if isinstance(sql, str) else sql
    types = types or []
    body = name.encode() + b"\x00" + b + b"\x00" + struct.pack("!h", len(types))
    body += b"".join(struct.pack("!I", t) for t in types)
    return pgwire.msg(b"P", body)


# =============================================================================================
# Programs


@dataclass
class Step:
    data: bytes     # frontend bytes, sent in ONE write
    ready: int      # ReadyForQuery messages to wait for
    text: str       # for reports


@dataclass
class Program:
    family: str
    steps: list[Step]
    startup: dict | None = None   # extra startup parameters (a fresh connection)
    fresh: bool = False           # leaves session state behind: use a fresh connection
    twin: bool = False            # compare the A and B runs
    diff: str | None = None       # output-masking differential: the accepted SELECT
    inner: str | None = None      # the statement a wrapper (channel) carries, for minimising a finding
    inner_family: str | None = None

    def text(self, sub: dict[str, str] | None = None) -> str:
        parts = []
        if self.startup:
            parts.append("startup " + json.dumps(self.startup))
        for s in self.steps:
            parts.append(s.text)
        out = "\n".join(parts)
        for k, v in (sub or {}).items():
            out = out.replace(k, v)
        return out


def S(sql: str | bytes, text: str | None = None) -> Step:
    """One simple Query."""
    if text is None:
        text = sql if isinstance(sql, str) else repr(sql)
    return Step(q(sql), 1, text)


def RAW(parts: list[tuple[bytes, str]], ready: int) -> Step:
    return Step(b"".join(p for p, _ in parts), ready, "ONE WRITE: " + " | ".join(t for _, t in parts))


_SHIFT_A = "abcdefghijklmnopqrstuvwxyz0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZ"
# A stable, never-folded empty string: the planner folds immutable calls on
# constants, and a plan (EXPLAIN, debug_print_plan) would then show the
# literal's value, which is the client's own text, not a leak.
_NOFOLD = "left(current_user::text, 0)"


def L(s: str) -> str:
    """A SQL expression that evaluates to s but whose text, parse tree and
    plan hold no marker (letters and digits shifted, undone by translate
    with an argument the planner cannot fold)."""
    a = _SHIFT_A
    sh = a[7:] + a[:7]
    enc = "".join(sh[a.index(ch)] if ch in a else ch for ch in s).replace("'", "''")
    # translate maps sh[j] -> a[j]
    return f"translate('{enc}', '{sh}' || {_NOFOLD}, '{a}')"


def Lr(s: str) -> str:
    """A second spelling of L(s): shifted differently and reversed."""
    a = _SHIFT_A
    sh = a[11:] + a[:11]
    enc = "".join(sh[a.index(ch)] if ch in a else ch for ch in s[::-1]).replace("'", "''")
    return f"reverse(translate('{enc}' || {_NOFOLD}, '{sh}', '{a}'))"


TEXT_DERIVED = [
    "reverse({x})", "upper({x})", "lower({x})", "initcap({x})", "md5({x})", "encode({x}::bytea, 'hex')",
    "encode(convert_to({x}, 'UTF8'), 'base64')", "encode({x}::bytea, 'escape')", "{x}::bytea",
    "sha256({x}::bytea)", "encode(sha256(convert_to({x}, 'UTF8')), 'hex')", "sha512(convert_to({x}, 'UTF8'))",
    "sha224({x}::bytea)", "to_hex(length({x}))", "translate({x}, 'aeiou', 'AEIOU')",
    "regexp_replace({x}, '\\D', '', 'g')", "replace({x}, '-', '')", "replace(replace({x}, '-', ''), ' ', '')",
    "substr({x}, 2)", "left({x}, -1)", "right({x}, -1)", "split_part({x}, '@', 1)", "to_json({x})",
    "to_jsonb({x})", "json_build_object('v', {x})", "jsonb_build_array({x})", "array_to_json(ARRAY[{x}])",
    "quote_literal({x})", "quote_ident({x})", "quote_nullable({x})", "format('%s|%I|%L', {x}, {x}, {x})",
    "{x} || ''", "concat({x}, '')", "concat_ws(',', {x}, 'z')", "string_to_array({x}, NULL)",
    "regexp_split_to_array({x}, '')", "ARRAY[{x}]", "ROW({x})", "{x}::char(600)", "{x}::name", "{x}::varchar",
    "{x} COLLATE \"C\"", "octet_length({x})", "xmlelement(name x, {x})", "xmlforest({x} AS v)",
    "to_tsvector('simple', {x})", "lpad({x}, 80, '*')", "rpad({x}, 80)", "btrim({x}, 'x')", "repeat({x}, 2)",
    "overlay({x} placing '' from 1 for 1)", "regexp_matches({x}, '.+')", "regexp_substr({x}, '[0-9]+')",
    "regexp_replace({x}, '(.)', '\\1 ', 'g')", "array_to_string(regexp_split_to_array({x}, ''), '.')",
    "translate({x}, '-', '')", "md5(reverse({x}))", "unistr({x})", "normalize({x})", "{x}::text::bytea",
    "decode(encode({x}::bytea, 'base64'), 'base64')", "convert_to({x}, 'LATIN1')", "ascii(substr({x}, 2))",
    "string_agg({x}, ',') OVER ()", "first_value({x}) OVER ()", "lag({x}) OVER (ORDER BY id)",
    "(SELECT {x})", "CASE WHEN true THEN {x} END", "COALESCE({x}, 'n')", "NULLIF({x}, 'n')",
    "GREATEST({x}, '')", "jsonb_build_object('v', {x})->>'v'", "(ARRAY[{x}])[1]", "row_to_json(ROW({x}))",
    "to_json(ARRAY[{x}])::text", "pg_catalog.textcat({x}, '')", "{x} ~ 'x'", "{x} IS NOT NULL",
    "substring({x} from 2 for 40)", "strpos({x}, '@')", "bit_length({x})", "to_ascii({x})",
    "{x}::json", "{x}::xml",
]
DATE_DERIVED = [
    "{x}::text", "to_char({x}, 'MM-DD')", "to_char({x}, 'YYYYMMDD')", "to_char({x}, 'J')",
    "to_char({x}, 'DD.MM.YYYY')", "to_char({x}, 'Mon DD YYYY')", "extract(month FROM {x})",
    "extract(day FROM {x})", "extract(epoch FROM {x})", "extract(julian FROM {x})", "date_part('doy', {x})",
    "{x}::timestamp", "{x}::timestamptz", "{x} + 0", "age(date '2000-01-01', {x})", "to_json({x})",
    "date_trunc('day', {x})", "({x})::text::bytea", "md5({x}::text)", "to_char({x}, 'YYYY-DDD')",
    "{x} - date '1900-01-01'", "ARRAY[{x}]", "ROW({x})", "to_jsonb({x})", "{x}::varchar",
    "make_date(extract(year FROM {x})::int, extract(month FROM {x})::int, extract(day FROM {x})::int)",
]
ERROR_CASTS = [
    "{x}::int", "{x}::bigint", "{x}::numeric", "{x}::float8", "{x}::date", "{x}::timestamp", "{x}::uuid",
    "{x}::inet", "{x}::cidr", "{x}::json", "{x}::jsonb", "{x}::xml", "{x}::bool", "{x}::interval",
    "{x}::regclass", "{x}::regtype", "{x}::regproc", "{x}::regrole", "{x}::regnamespace", "{x}::regoper",
    "{x}::regconfig", "{x}::money", "{x}::macaddr", "{x}::bit(4)", "{x}::point", "{x}::tsquery",
    "{x}::jsonpath", "{x}::int[]", "{x}::oid", "{x}::pg_lsn", "{x}::tid", "{x}::int4range", "{x}::box",
    "to_date({x}, 'YYYY-MM-DD')", "to_number({x}, '999')", "to_timestamp({x}, 'YYYY-MM-DD')",
    "('{{' || {x} || '}}')::int[]", "xmlparse(document {x})", "jsonb_path_query('{{}}', {x}::jsonpath)",
    "({x} || 'x')::int", "{x}::varchar::int", "{x}::text::date", "replace({x}, '-', '')::int",
    "replace(replace({x}, '-', ''), ' ', '')::int", "regexp_replace({x}, '\\D', '', 'g')::int",
    "convert_from({x}::bytea, 'SJIS')", "{x}::aclitem", "{x}::txid_snapshot", "{x}::circle",
    "{x}::int2vector", "{x}::regprocedure", "{x}::regcollation", "format('%s', {x})::int",
    "to_char({x}::date, 'YYYY')", "json_extract_path_text({x}::json, 'a')", "{x}::tsvector::int",
]
DATE_ERRORS = ["{x}::text::int", "to_char({x}, 'MMDD')::bool", "({x}::text || 'x')::date",
               "to_char({x}, 'YYYYMMDD')::uuid", "{x}::text::inet", "({x} - date '1900-01-01')::text::bool"]
WHOLE_ROW = [
    "{a}", "{a}.*", "({a}).*", "ROW({a}.*)", "{a}.to_jsonb", "{a}.row_to_json", "{a}.to_json", "{a}.concat",
    "{a}.text", "({a}).to_jsonb", "({a}).text", "to_jsonb({a})", "row_to_json({a})", "to_json({a})",
    "{a}::text", "({a}.*)::text", "json_build_array({a})", "concat({a})", "format('%s', {a})",
    "row_to_json(ROW({a}.*))", "hstore({a})", "{a}.hstore", "ARRAY[{a}]", "quote_literal({a})",
    "(SELECT json_agg(j) FROM jsonb_each_text(to_jsonb({a})) j)", "jsonb_populate_record({a}, '{{}}')",
    "{a}::customers", "md5({a}::text)", "encode({a}::text::bytea, 'base64')", "upper({a}::text)",
    "reverse({a}::text)", "(SELECT array_agg(v) FROM json_each_text(row_to_json({a})) AS e(k, v))",
    "to_jsonb({a}) - 'id'", "to_jsonb({a})->>'email'", "row_to_json({a})->>'ssn'", "({a}).email",
    "({a}).*::text", "{a}.textanycat", "{a} IS NOT NULL", "xmlelement(name r, {a})",
    "(to_jsonb({a})).email", "array_to_string(ARRAY[{a}::text], ',')",
]
AGGS = [
    "string_agg({x}, ',' ORDER BY {a}.id)", "string_agg({x}, ',')", "json_agg({x})", "jsonb_agg({x} ORDER BY {a}.id)",
    "array_agg({x})", "array_agg(DISTINCT {x})", "xmlagg(xmlelement(name v, {x}))", "jsonb_object_agg({a}.id, {x})",
    "json_object_agg({x}, {a}.id)", "min({x})", "max({x})", "mode() WITHIN GROUP (ORDER BY {x})",
    "percentile_disc(0.5) WITHIN GROUP (ORDER BY {x})", "string_agg(reverse({x}), '')",
    "array_to_string(array_agg({x}), '|')", "json_agg({a})", "array_agg({a})", "string_agg({a}::text, ';')",
    "jsonb_agg(to_jsonb({a}))", "count(DISTINCT {x})", "max(length({x}))", "min({x}::text)",
    "string_agg(DISTINCT {x}, ',')", "array_agg({x} ORDER BY {x} DESC)",
]
REL_SPELLINGS = [
    ("customers", "customers"), ("public.customers", "customers"), ('"customers"', "customers"),
    ("CUSTOMERS", "customers"), ("ONLY customers", "customers"), ("customers *", "customers"),
    ('U&"\\0063ustomers"', "customers"), ('public."customers"', "customers"), ("Customers", "customers"),
    (f"{LEAK_DB}.public.customers", "customers"), ("ONLY public.customers", "customers"),
]
ALIASES = ["c", "t", "x", '"C"', "cust", "customers2"]
OPTION_NAMES = ["debug_print_rewritten", "debug_print_parse", "debug_print_plan", "role",
                "session_authorization", "standard_conforming_strings", "client_encoding"]
OFF_SPELLINGS = ["off", "0", "'0'", "false", "'off'", "\"off\"", "'f'", "no", "'n'", "'fa'", "OFF", "FALSE",
                 "'Off'", "'of'", "' off'", "'false'", "'no'", "DEFAULT", "'0 '", "00", "'00'", "E'off'",
                 "U&'off'", "$$off$$", "'of'"]
ON_SPELLINGS = ["on", "1", "'1'", "true", "'on'", "yes", "'t'", "'tr'", "ON", "'y'", "TRUE"]


def _setting_key(stmt: str) -> str:
    """'SET client_min_messages = debug2' -> 'client_min_messages=debug2'"""
    m = re.match(r"(?i)\s*SET\s+(?:SESSION\s+|LOCAL\s+)?(\w+)\s*(?:=|TO)\s*'?([\w ,/]+)", stmt)
    if m:
        return f"{m.group(1).lower()}={m.group(2).strip().lower()}"
    m = re.search(r"set_config\('(\w+)'", stmt)
    if m:
        return f"set_config({m.group(1)})"
    return stmt.split()[0] + " " + stmt.split()[1] if len(stmt.split()) > 1 else stmt


INNER_FAMILY = {"plain": "plain", "derived": "derived", "wholerow": "whole-row", "echo": "predicate-echo",
                "agg": "aggregate", "error": "error-text", "sort": "plain", "read": "plain"}


class Generator:
    """Programs for one role: program(i) depends only on (seed, role, i)."""

    def __init__(self, seed: int, role: str, canaries: list[Canary], preds: dict[int, list[str]]):
        self.seed = seed
        self.role = role
        self.canaries = canaries
        self.by_id = {c.id: c for c in canaries}
        self.preds = preds  # canary id -> predicates (alias placeholder {a}) false on masked values
        self.a_id, self.b_id, self.d_id = TWIN_IDS[role]
        self.families = [
            (self.f_plain, 10), (self.f_derived, 10), (self.f_error, 6), (self.f_echo, 10),
            (self.f_twin, 10), (self.f_agg, 5), (self.f_wholerow, 9), (self.f_indirect, 6), (self.f_view, 3),
            (self.f_copy, 5), (self.f_cursor, 4), (self.f_prepare, 4), (self.f_explain, 6),
            (self.f_settings, 6), (self.f_pipelined_scs, 4), (self.f_encoding, 6), (self.f_options, 4),
            (self.f_extended, 8), (self.f_diff, 7), (self.f_notify, 1), (self.f_payments, 3),
            (self.f_servercopy, 2), (self.f_multi, 2), (self.f_refused, 1),
        ]
        self.total_weight = sum(w for _, w in self.families)

    # -- building blocks ------------------------------------------------------------------
    def rel(self, r: random.Random) -> tuple[str, str]:
        """(FROM item, qualifier for columns)."""
        spelling, name = r.choice(REL_SPELLINGS) if r.random() < 0.5 else REL_SPELLINGS[0]
        if r.random() < 0.8:
            alias = r.choice(ALIASES)
            return f"{spelling} {alias}" if r.random() < 0.7 else f"{spelling} AS {alias}", alias
        return spelling, name

    def one_id(self, r: random.Random, twin: bool) -> str:
        return "@CID_@" if twin else str(r.choice(self.canaries).id)

    def where_id(self, r: random.Random, a: str, twin: bool) -> str:
        if twin:
            return r.choice([f"{a}.id = @CID_@", f"{a}.id IN (@CID_@)", f"{a}.id = @CID_@::bigint",
                             f"{a}.id BETWEEN @CID_@ AND @CID_@"])
        k = r.random()
        if k < 0.5:
            return f"{a}.id = {r.choice(self.canaries).id}"
        if k < 0.8:
            return f"{a}.id >= {CANARY_MIN}"
        ids = sorted({c.id for c in r.sample(self.canaries, 3)})
        return f"{a}.id IN ({', '.join(map(str, ids))})"

    def pcol(self, r: random.Random, text_only: bool = False) -> str:
        cols = PROTECTED_TEXT if text_only else PROTECTED
        return r.choice(cols)

    def derived(self, r: random.Random, x: str, col: str) -> str:
        if col == "birth_date":
            return r.choice(DATE_DERIVED).format(x=x)
        return r.choice(TEXT_DERIVED).format(x=x)

    def inner(self, r: random.Random, twin: bool) -> tuple[str, str]:
        """A SELECT reading protected values (for wrappers): (sql, family)."""
        sql, fam = self._inner(r, twin)
        self._last_inner = (sql, fam)
        return sql, fam

    def _inner(self, r: random.Random, twin: bool) -> tuple[str, str]:
        k = r.random()
        if k < 0.25:
            return self.sel_plain(r, twin), "plain"
        if k < 0.45:
            return self.sel_derived(r, twin), "derived"
        if k < 0.65:
            return self.sel_wholerow(r, twin), "wholerow"
        if k < 0.8 and not twin:
            return self.sel_echo(r), "echo"
        if k < 0.9:
            return self.sel_agg(r, twin), "agg"
        return self.sel_error(r, twin), "error"

    def sel_plain(self, r, twin) -> str:
        frm, a = self.rel(r)
        k = r.random()
        if k < 0.3:
            cols = r.choice(["*", f"{a}.*"])
        else:
            pool = list(PROTECTED) + ["id", "created_at"]
            cols = ", ".join(f"{a}.{c}" if r.random() < 0.5 else c for c in r.sample(pool, r.randint(1, 5)))
        sql = f"SELECT {cols} FROM {frm} WHERE {self.where_id(r, a, twin)}"
        if r.random() < 0.4:
            sql += r.choice([f" ORDER BY {a}.id", " ORDER BY created_at, id", f" ORDER BY {a}.id DESC"])
        if r.random() < 0.3:
            sql += f" LIMIT {r.randint(1, 20)}"
        return sql

    def sel_derived(self, r, twin) -> str:
        frm, a = self.rel(r)
        exprs = []
        for _ in range(r.randint(1, 3)):
            c = self.pcol(r)
            exprs.append(self.derived(r, f"{a}.{c}" if r.random() < 0.6 else c, c))
        if r.random() < 0.3:
            exprs.insert(0, r.choice(["email", f"{a}.phone", "*", "id"]))
        return f"SELECT {', '.join(exprs)} FROM {frm} WHERE {self.where_id(r, a, twin)}"

    def sel_error(self, r, twin) -> str:
        frm, a = self.rel(r)
        c = self.pcol(r)
        x = f"{a}.{c}"
        e = r.choice(DATE_ERRORS if c == "birth_date" else ERROR_CASTS).format(x=x)
        return f"SELECT {e} FROM {frm} WHERE {self.where_id(r, a, twin)}"

    def sel_wholerow(self, r, twin) -> str:
        frm, a = self.rel(r)
        items = [r.choice(WHOLE_ROW).format(a=a) for _ in range(r.randint(1, 2))]
        if r.random() < 0.6:  # plain columns beside it: the output-masking shape
            items.insert(0, r.choice(["email", f"{a}.email", "phone", "card_number", "notes", f"{a}.id", "id, email"]))
        return f"SELECT {', '.join(items)} FROM {frm} WHERE {self.where_id(r, a, twin)}"

    def sel_agg(self, r, twin) -> str:
        frm, a = self.rel(r)
        c = self.pcol(r)
        x = f"{a}.{c}"
        ag = r.choice(AGGS).format(x=x, a=a)
        if twin:
            w = f"{a}.id IN (@CID_@, @DID_@)"
        else:
            w = r.choice([f"{a}.id >= {CANARY_MIN}", f"{a}.id BETWEEN 1 AND 40 OR {a}.id >= {CANARY_MIN}"])
        return f"SELECT {ag} FROM {frm} WHERE {w}"

    def sel_echo(self, r) -> str:
        c = r.choice([c for c in self.canaries if self.preds.get(c.id)])
        pred = r.choice(self.preds[c.id])
        e = L(c.echo) if r.random() < 0.7 else Lr(c.echo)
        frm, a = self.rel(r)
        P = pred.format(a=a)
        cid = c.id
        forms = [
            f"SELECT {e} FROM {frm} WHERE {a}.id = {cid} AND {P}",
            f"SELECT CASE WHEN {P} THEN {e} END FROM {frm} WHERE {a}.id = {cid}",
            f"SELECT {e} FROM orders o JOIN {frm} ON {a}.id = o.customer_id AND {P} WHERE o.customer_id = {cid} LIMIT 1",
            f"SELECT {e} WHERE EXISTS (SELECT 1 FROM {frm} WHERE {a}.id = {cid} AND {P})",
            f"SELECT {e} FROM orders o WHERE o.customer_id IN (SELECT {a}.id FROM {frm} WHERE {a}.id = {cid} AND {P}) LIMIT 1",
            f"SELECT {e} FROM {frm} WHERE {a}.id = {cid} GROUP BY {a}.id HAVING bool_and({P})",
            f"SELECT CASE WHEN count(*) FILTER (WHERE {P}) > 0 THEN {e} END FROM {frm} WHERE {a}.id = {cid}",
            f"WITH s AS (SELECT * FROM {frm} WHERE {a}.id = {cid}) SELECT {e} FROM s {a} WHERE {P}",
            f"WITH s AS MATERIALIZED (SELECT * FROM {frm}) SELECT {e} FROM s {a} WHERE {a}.id = {cid} AND {P}",
            f"SELECT {e} FROM (SELECT * FROM {frm}) {a} WHERE {a}.id = {cid} AND {P}",
            f"SELECT {e} FROM {frm}, LATERAL (SELECT 1 WHERE {P}) l WHERE {a}.id = {cid}",
            f"SELECT {e} FROM {frm} WHERE {a}.id = {cid} AND {P} UNION ALL SELECT NULL WHERE false",
            f"SELECT {e} FROM (VALUES ({cid})) v(i) JOIN {frm} ON {a}.id = v.i WHERE {P}",
            f"SELECT max(CASE WHEN {P} THEN {e} END) OVER () FROM {frm} WHERE {a}.id = {cid}",
            f"SELECT {e} FROM {frm} WHERE {a}.id = {cid} AND {P} INTERSECT SELECT {e}",
            f"SELECT {e} FROM {frm} WHERE ({a}.id, true) = ({cid}, {P})",
        ]
        if all(col not in pred for col in ("ssn", "card_number", "birth_date", "address", "notes")):
            vfrm = "customer_contacts " + a
            forms.append(f"SELECT {e} FROM {vfrm} WHERE {a}.id = {cid} AND {P}")
        return r.choice(forms)

    # -- families -------------------------------------------------------------------------
    def program(self, i: int) -> Program:
        r = random.Random(f"{self.seed}:{self.role}:{i}")
        x = r.uniform(0, self.total_weight)
        for fn, w in self.families:
            x -= w
            if x <= 0:
                break
        self._last_inner = None
        p = fn(r)
        if self._last_inner and p.inner is None and p.diff is None:
            p.inner, fam = self._last_inner
            p.inner_family = INNER_FAMILY.get(fam, fam)
        return p

    def f_plain(self, r):
        twin = r.random() < 0.5
        return Program("plain", [S(self.sel_plain(r, twin))], twin=twin)

    def f_derived(self, r):
        twin = r.random() < 0.4
        return Program("derived", [S(self.sel_derived(r, twin))], twin=twin)

    def f_error(self, r):
        twin = r.random() < 0.5
        return Program("error-text", [S(self.sel_error(r, twin))], twin=twin)

    def f_echo(self, r):
        return Program("predicate-echo", [S(self.sel_echo(r))])

    def f_twin(self, r):
        """Statements whose result may depend on hidden values only if the
        masking failed: compared between twins A and B (B sorts after D,
        A equals D, B is longer)."""
        frm, a = self.rel(r)
        frm2 = frm.replace(f" {a}", " d").replace(" AS d", " AS d") if f" {a}" in frm else f"{frm} d"
        c = self.pcol(r)
        x, xd = f"{a}.{c}", f"d.{c}"
        dx = self.derived(r, x, c) if r.random() < 0.3 else x
        preds = [f"{x} > {xd}", f"{x} = {xd}", f"{x} < {xd}", f"{x} IS DISTINCT FROM {xd}",
                 f"length({x}::text) > 40", f"length({x}::text) = length({xd}::text)", f"{x}::text > 'm'",
                 f"{x}::text LIKE '%9%'", f"{x}::text ~ '^[0-9+]'", f"md5({x}::text) < md5({xd}::text)",
                 f"{x}::text LIKE '%z%'", f"position('z' in {x}::text) > 0", f"octet_length({x}::text) > 100",
                 f"{x}::text ^@ '9'", f"{x}::text ILIKE '%Z%'"]
        P = r.choice(preds)
        forms = [
            f"SELECT count(*) FROM {frm} JOIN {frm2} ON d.id = @DID_@ WHERE {a}.id = @CID_@ AND {P}",
            f"SELECT {a}.id FROM {frm} WHERE {a}.id IN (@CID_@, @DID_@) ORDER BY {dx} DESC, {a}.id",
            f"SELECT {a}.id FROM {frm} WHERE {a}.id IN (@CID_@, @DID_@) ORDER BY {dx}, {a}.id LIMIT 1",
            f"SELECT count(DISTINCT {x}) FROM {frm} WHERE {a}.id IN (@CID_@, @DID_@)",
            f"SELECT {a}.id, rank() OVER (ORDER BY {dx}) FROM {frm} WHERE {a}.id IN (@CID_@, @DID_@) ORDER BY 1",
            f"SELECT DISTINCT ON ({x}) {a}.id FROM {frm} WHERE {a}.id IN (@CID_@, @DID_@) ORDER BY {x}, {a}.id",
            f"SELECT count(*) FROM {frm} WHERE {a}.id IN (@CID_@, @DID_@) GROUP BY {x} ORDER BY 1",
            f"SELECT CASE WHEN {P} THEN 1 ELSE 0 END FROM {frm} JOIN {frm2} ON d.id = @DID_@ WHERE {a}.id = @CID_@",
            f"SELECT 1 / (CASE WHEN {P} THEN 0 ELSE 1 END) FROM {frm} JOIN {frm2} ON d.id = @DID_@ WHERE {a}.id = @CID_@",
            f"SELECT max({x}) = min({x}) FROM {frm} WHERE {a}.id IN (@CID_@, @DID_@)",
            f"SELECT octet_length(string_agg({x}::text, '')) FROM {frm} WHERE {a}.id IN (@CID_@, @DID_@)",
            f"SELECT {a}.id FROM {frm} WHERE {a}.id IN (@CID_@, @DID_@) AND {x} = (SELECT {c} FROM customers WHERE id = @DID_@)",
            f"SELECT pg_column_size({x}), length({x}::text) FROM {frm} WHERE {a}.id = @CID_@",
            f"SELECT id FROM {frm} WHERE {a}.id IN (@CID_@, @DID_@) ORDER BY {a}::text, id",
            f"SELECT count(*) FROM {frm} WHERE {a}.id = @CID_@ AND length({a}::text) > 600",
            f"SELECT pg_column_size({a}) FROM {frm} WHERE {a}.id = @CID_@",
            f"SELECT {a}.id, ntile(2) OVER (ORDER BY {x}) FROM {frm} WHERE {a}.id IN (@CID_@, @DID_@) ORDER BY 1",
            f"SELECT {a}.id FROM {frm} WHERE {a}.id IN (@CID_@, @DID_@) ORDER BY {x} USING >, 1",
        ]
        return Program("twin-oracle", [S(r.choice(forms))], twin=True)

    def f_agg(self, r):
        twin = r.random() < 0.3
        return Program("aggregate", [S(self.sel_agg(r, twin))], twin=twin)

    def f_wholerow(self, r):
        twin = r.random() < 0.4
        return Program("whole-row", [S(self.sel_wholerow(r, twin))], twin=twin)

    def f_indirect(self, r):
        twin = r.random() < 0.4
        inner, fam = self.inner(r, twin)
        frm, a = self.rel(r)
        cid = self.one_id(r, twin)
        forms = [
            f"SELECT * FROM ({inner}) s",
            f"WITH s AS ({inner}) SELECT * FROM s",
            f"WITH s AS MATERIALIZED ({inner}) SELECT * FROM s",
            f"SELECT s.* FROM orders o, LATERAL ({inner}) s WHERE o.id = 1",
            f"({inner}) UNION ALL (SELECT NULL::text{', NULL' * 0} WHERE false)" if False else f"{inner} UNION ALL {inner}",
            f"{inner} INTERSECT {inner}",
            f"{inner} EXCEPT SELECT * FROM ({inner}) z WHERE false",
            f"SELECT * FROM (VALUES ({cid})) v(i) JOIN LATERAL ({inner}) s ON true",
            f"WITH RECURSIVE r(n) AS (SELECT 1 UNION ALL SELECT n + 1 FROM r WHERE n < 2) SELECT s.* FROM r, ({inner}) s",
            f"SELECT (SELECT array_agg(s) FROM ({inner}) s)",
            f"SELECT * FROM (SELECT * FROM (SELECT * FROM {frm}) {a} WHERE {a}.id = {cid}) z",
            f"SELECT v.*, {a}.email, {a}.ssn FROM (VALUES ({cid}, 'x')) v(i, t) JOIN {frm} ON {a}.id = v.i",
            f"SELECT * FROM {frm} NATURAL JOIN (SELECT {cid}::bigint AS id) v",
            f"SELECT o.id, {a}.* FROM orders o LEFT JOIN {frm} ON {a}.id = o.customer_id WHERE o.customer_id = {cid}",
            f"SELECT * FROM {frm} WHERE {a}.id = {cid} UNION SELECT * FROM {frm} WHERE {a}.id = {cid}",
        ]
        if not twin:
            forms.append(f"TABLE customers ORDER BY id DESC LIMIT {r.randint(1, 14)}")
            forms.append(f"SELECT * FROM ROWS FROM (jsonb_each_text((SELECT to_jsonb(c) FROM customers c WHERE id = {cid}))) j")
        return Program(f"indirection>{fam}", [S(r.choice(forms))], twin=twin)

    def f_view(self, r):
        twin = r.random() < 0.4
        a = r.choice(["v", "cc", "customer_contacts"])
        frm = "customer_contacts" if a == "customer_contacts" else f"customer_contacts {a}"
        w = f"{a}.id = @CID_@" if twin else f"{a}.id >= {CANARY_MIN}"
        c = r.choice(["email", "phone", "full_name"])
        forms = [f"SELECT * FROM {frm} WHERE {w}", f"SELECT {a} FROM {frm} WHERE {w}",
                 f"SELECT {a}.to_jsonb, email FROM {frm} WHERE {w}", f"SELECT {self.derived(r, f'{a}.{c}', c)} FROM {frm} WHERE {w}",
                 f"SELECT {r.choice(AGGS).format(x=f'{a}.{c}', a=a)} FROM {frm} WHERE {w}",
                 f"SELECT email(v), phone(v) FROM customer_contacts v WHERE {w.replace(a + '.', 'v.')}",
                 "TABLE customer_contacts ORDER BY id DESC LIMIT 20",
                 f"SELECT {r.choice(ERROR_CASTS).format(x=f'{a}.{c}')} FROM {frm} WHERE {w}"]
        return Program("view", [S(r.choice(forms))], twin=twin)

    def f_copy(self, r):
        twin = r.random() < 0.4
        inner, fam = self.inner(r, twin)
        opts = r.choice(["", " WITH (FORMAT csv)", " WITH (FORMAT csv, HEADER)", " (FORMAT binary)",
                         " WITH (FORMAT text, DELIMITER '|')", " CSV HEADER", " WITH (FORMAT csv, FORCE_QUOTE *)"])
        if r.random() < 0.85:
            return Program(f"copy>{fam}", [S(f"COPY ({inner}) TO STDOUT{opts}")], twin=twin and "binary" not in opts)
        target = r.choice(["customers", "customers (id, email, phone, ssn)", "customers (email, card_number, birth_date)",
                           "customer_contacts", "payments", "payments_2025_03", "payments_2025_03 (id, card_number)",
                           "ONLY customers (notes)", "public.customers (address, notes)"])
        return Program("copy-table", [S(f"COPY {target} TO STDOUT{opts}")])

    def f_cursor(self, r):
        twin = r.random() < 0.4
        inner, fam = self.inner(r, twin)
        kind = r.choice(["", "BINARY ", "SCROLL ", "NO SCROLL ", "INSENSITIVE "])
        hold = r.random() < 0.3
        fetch = r.choice(["FETCH ALL FROM k", "FETCH 5 FROM k", "FETCH NEXT FROM k", "FETCH FORWARD 2 IN k",
                          "FETCH LAST FROM k" if "SCROLL" in kind and "NO" not in kind else "FETCH ALL IN k",
                          "MOVE 0 IN k; FETCH ALL FROM k"])
        decl = f"DECLARE k {kind}CURSOR {'WITH HOLD ' if hold else ''}FOR {inner}"
        k = r.random()
        if k < 0.4:
            steps = [S("BEGIN"), S(decl), S(fetch), S("COMMIT")]
        elif k < 0.7:
            steps = [S(f"BEGIN; {decl}; {fetch}; COMMIT")]
        else:  # the FETCH over the extended protocol
            steps = [S("BEGIN"), S(decl),
                     RAW([(parse_msg(fetch.split('; ')[-1]), "Parse " + fetch), (pgwire.bind(result_formats=[r.choice([0, 1])]), "Bind"),
                          (pgwire.describe_portal(), "Describe"), (pgwire.execute(), "Execute"), (pgwire.sync(), "Sync")], 1),
                     S("COMMIT")]
        return Program(f"cursor>{fam}", steps, fresh=hold, twin=twin and "BINARY" not in kind)

    def f_prepare(self, r):
        twin = r.random() < 0.4
        inner, fam = self.inner(r, twin)
        name = r.choice(["p", "leak_p", '"P"'])
        k = r.random()
        if k < 0.5:
            steps = [S(f"PREPARE {name} AS {inner}"), S(f"EXECUTE {name}")]
        elif k < 0.75:
            par = inner.replace("@CID_@", "$1") if "@CID_@" in inner else inner
            steps = [S(f"PREPARE {name}(bigint) AS {par}" if "$1" in par else f"PREPARE {name} AS {par}"),
                     S(f"EXECUTE {name}(@CID_@)" if "$1" in par else f"EXECUTE {name}")]
        else:
            steps = [S(f"PREPARE {name} AS {inner}"), S(f"CREATE TEMP TABLE leak_t AS EXECUTE {name}"),
                     S("SELECT * FROM leak_t"), S("TABLE leak_t")]
            twin = False
        return Program(f"prepare>{fam}", steps, fresh=True, twin=twin)

    def f_explain(self, r):
        inner, fam = self.inner(r, False)
        opts = r.choice(["", "(VERBOSE) ", "(VERBOSE, COSTS off) ", "(ANALYZE, VERBOSE) ", "(FORMAT json, VERBOSE) ",
                         "(FORMAT xml, VERBOSE) ", "(FORMAT yaml, VERBOSE) ", "VERBOSE ", "ANALYZE VERBOSE ",
                         "(VERBOSE, SETTINGS, SUMMARY) ", "(ANALYZE, VERBOSE, BUFFERS, WAL) ", "(COSTS off) "])
        name = r.choice(["p", "s1"])
        k = r.random()
        prep = [S(f"PREPARE {name} AS {inner}")]
        if r.random() < 0.3:  # a protocol-level named statement is EXECUTE-able too
            prep = [RAW([(parse_msg(inner, name), f"Parse[{name}] {inner}"), (pgwire.sync(), "Sync")], 1)]
        ex = f"EXPLAIN {opts}"
        forms = [
            ("query", 0.15, lambda: [S(ex + inner)]),
            ("EXECUTE", 0.2, lambda: prep + [S(f"{ex}EXECUTE {name}")]),
            ("CREATE TABLE AS EXECUTE", 0.25, lambda: prep + [S(f"{ex}CREATE TEMP TABLE leak_e AS EXECUTE {name}")]),
            ("CREATE TABLE AS EXECUTE WITH NO DATA", 0.1,
             lambda: prep + [S(f"{ex}CREATE TABLE leak_e2 AS EXECUTE {name} WITH NO DATA")]),
            ("CREATE TABLE AS query", 0.1, lambda: [S(f"{ex}CREATE TEMP TABLE leak_e AS {inner}")]),
            ("DECLARE", 0.05, lambda: [S("BEGIN"), S(f"{ex}DECLARE k CURSOR FOR {inner}"), S("ROLLBACK")]),
            ("SELECT INTO", 0.05, lambda: [S(f"{ex}SELECT * INTO TEMP leak_i FROM ({inner}) s")]),
            ("extended Parse of EXPLAIN EXECUTE", 0.05,
             lambda: prep + [RAW([(parse_msg(f"{ex}EXECUTE {name}"), f"Parse {ex}EXECUTE {name}"),
                                  (pgwire.bind(), "Bind"), (pgwire.execute(), "Execute"), (pgwire.sync(), "Sync")], 1)]),
            ("CREATE MATERIALIZED VIEW", 0.05, lambda: [S(f"{ex}CREATE MATERIALIZED VIEW leak_mv AS {inner}")]),
        ]
        for form, w, mk in forms:
            k -= w
            if k <= 0:
                break
        prep_kind = "protocol Parse" if prep[0].text.startswith("ONE WRITE") else "PREPARE"
        return Program(f"explain[{form}]>{opts.strip() or 'plain'} after {prep_kind}: {fam}", mk(), fresh=True)

    def f_settings(self, r):
        """A session setting, then a statement (separately, in one Query, or
        pipelined in one write)."""
        inner, fam = self.inner(r, False)
        setting = r.choice([
            "SET client_min_messages = debug2", "SET client_min_messages = debug5", "SET client_min_messages = log",
            "SET client_min_messages TO 'debug1'", "SET trace_sort = on", "SET SESSION client_min_messages = debug3",
            "SET LOCAL client_min_messages = debug2", "SET standard_conforming_strings = on",
            "SET escape_string_warning = on", "SET datestyle = 'SQL, DMY'", "SET datestyle = 'German'",
            "SET datestyle = 'Postgres, MDY'", "SET bytea_output = 'escape'", "SET IntervalStyle = 'sql_standard'",
            "SET search_path = pg_temp, public", "SET TimeZone = 'America/New_York'", "SET extra_float_digits = 3",
            "SET debug_pretty_print = off", "SET debug_print_rewritten = on", "SET debug_print_plan TO 1",
            "SET log_parser_stats = on", "SET jit = off", "SET enable_seqscan = off", "SET work_mem = '64kB'",
            "SELECT set_config('client_min_messages', 'debug2', false)",
            "SELECT pg_catalog.set_config('debug_print_rewritten', 'on', false)",
            "SELECT set_config('application_name', (SELECT email FROM customers WHERE id = %d), false)" % self.a_id,
            "SET application_name = 'leak'", "SET client_encoding = 'UTF8'", "SET NAMES 'UTF8'",
        ])
        extra = []
        if "trace_sort" in setting or r.random() < 0.3:
            extra = [r.choice(["SET client_min_messages = log", "SET client_min_messages = debug1",
                               "SET client_min_messages = debug2"])]
        if "trace_sort" in setting and r.random() < 0.6:
            # a sort over values that output masking reads raw
            frm, a = self.rel(r)
            inner = (f"SELECT {r.choice(['email', 'phone', 'notes', 'card_number', '*'])} FROM {frm} "
                     f"WHERE {a}.id = {self.a_id} ORDER BY {a}.created_at")
            fam = "sort"
            self._last_inner = (inner, fam)
        sets = [setting] + extra
        k = r.random()
        if k < 0.4:
            steps, how = [S(s) for s in sets] + [S(inner)], "separate"
        elif k < 0.6:
            steps, how = [S("; ".join(sets + [inner]))], "one Query"
        elif k < 0.85:
            steps, how = [RAW([(q(s), s) for s in sets] + [(q(inner), inner)], len(sets) + 1)], "pipelined"
        else:  # the statement over the extended protocol (Parse echoed at DEBUG2)
            steps, how = [S(s) for s in sets] + [self.ext_step(r, inner)], "then extended"
        twin = False
        if "@CID_@" not in inner and str(self.a_id) in inner and r.random() < 0.7:
            inner_t = inner.replace(str(self.a_id), "@CID_@")
            steps = [Step(s.data.replace(str(self.a_id).encode(), b"@CID_@"), s.ready,
                          s.text.replace(str(self.a_id), "@CID_@")) for s in steps]
            twin = inner_t != inner
        key = ",".join(_setting_key(x) for x in sets)
        return Program(f"settings[{key}]>{how}: {fam}", steps, fresh=True, twin=twin)

    def backslash_attack(self, r, cid: str) -> str:
        col = r.choice(["email", "ssn", "card_number", "phone", "address", "notes", "birth_date::text", "c::text"])
        return r.choice([
            f"SELECT '\\' ,' , (SELECT {col} FROM customers c WHERE id = {cid}) AS leak, ' AS z --'",
            f"SELECT '\\', ' , (SELECT {col} FROM customers c WHERE id = {cid}) AS leak, ' --'",
            f"SELECT 'a\\' , (SELECT {col} FROM customers c WHERE id = {cid}) AS leak --'",
            f"SELECT 'x' AS a, 'y\\' , (SELECT string_agg({col}, ',') FROM customers c WHERE id >= {CANARY_MIN}), ' -- '",
        ])

    def f_pipelined_scs(self, r):
        """standard_conforming_strings changes pipelined in ONE write ahead of
        a statement whose meaning depends on backslashes."""
        twin = r.random() < 0.3
        cid = "@CID_@" if twin else str(r.choice(self.canaries).id)
        attack = self.backslash_attack(r, cid)
        parts = []
        n = 0
        plain = r.random() < 0.6  # the spellings PostgreSQL's own clients use most: 1 / 0, on / off
        for _ in range(r.randint(0, 4)):
            val = r.choice(["1", "on"]) if plain else r.choice(ON_SPELLINGS)
            parts.append(r.choice([f"SET standard_conforming_strings TO {val}", f"SET standard_conforming_strings = {val}"]))
        off = r.choice(["0", "off", "false"]) if plain else r.choice(OFF_SPELLINGS)
        if plain or r.random() < 0.5:
            parts.append(r.choice([f"SET standard_conforming_strings TO {off}", f"SET standard_conforming_strings = {off}"]))
        else:
            parts.append(r.choice([
                f"SET SESSION standard_conforming_strings TO {off}", "RESET standard_conforming_strings",
                f"SET LOCAL standard_conforming_strings TO {off}", "SET standard_conforming_strings TO DEFAULT",
                "SELECT set_config('standard_conforming_strings', 'off', false)",
                "UPDATE pg_settings SET setting = 'off' WHERE name = 'standard_conforming_strings'",
                f"set standard_conforming_strings to {off}", f"SET \"standard_conforming_strings\" = {off}",
                f"SET standard_conforming_strings TO {r.choice(ON_SPELLINGS)}; SET standard_conforming_strings TO {off}"]))
        if r.random() < 0.3:
            r.shuffle(parts)
        msgs = []
        use_ext = r.random() < 0.25
        for p in parts:
            if use_ext and ";" not in p:
                msgs += [(parse_msg(p), "Parse " + p), (pgwire.bind(), "Bind"), (pgwire.execute(), "Execute"),
                         (pgwire.sync(), "Sync")]
            else:
                msgs.append((q(p), p))
            n += 1
        if r.random() < 0.2:
            msgs.insert(0, (q("BEGIN"), "BEGIN"))
            n += 1
        msgs.append((q(attack), attack))
        n += 1
        seq = "/".join(re.sub(r"(?i)^SET (SESSION |LOCAL )?standard_conforming_strings (TO|=) ", "", p) for p in parts)
        if r.random() < 0.85:
            steps, how = [RAW(msgs, n)], "pipelined" + (" (extended)" if use_ext else "")
        else:
            steps, how = [S(p) for p in parts] + [S(attack)], "separate"
        return Program(f"standard_conforming_strings[{how}]>{seq}", steps, fresh=True, twin=twin)

    def enc_attack(self, r, enc: str, cid: str) -> bytes:
        lead = r.choice(ENC_LEADS[enc])
        col = r.choice(["email", "ssn", "card_number", "phone", "address", "c::text", "notes"]).encode()
        c = cid.encode()
        return r.choice([
            b"SELECT E'" + lead + b"\\' , (SELECT " + col + b" FROM customers c WHERE id = " + c + b") AS leak -- '",
            b"SELECT E'" + lead + b"\\' , (SELECT " + col + b" FROM customers c WHERE id = " + c + b") AS leak, E' '",
            b"SELECT E'" + lead + b"\\', (SELECT string_agg(" + col + b", ',') FROM customers c WHERE id >= "
            + str(CANARY_MIN).encode() + b") --'",
            b"SELECT 1 FROM customers WHERE email = E'" + lead + b"\\' UNION ALL SELECT " + col
            + b"::int FROM customers c WHERE id = " + c + b" -- '",
            b"SELECT e'" + lead + b"\\' , (SELECT " + col + b" FROM customers c WHERE id = " + c + b") -- '",
            b"SELECT E'" + lead + b"\\'::text AS a, (SELECT " + col + b" FROM customers c WHERE id = " + c + b") AS b -- '",
        ])

    def f_encoding(self, r):
        """Client-only encodings where a character's second byte is 0x5C."""
        twin = r.random() < 0.3
        cid = "@CID_@" if twin else str(r.choice(self.canaries).id)
        enc = r.choice(list(ENC_LEADS))
        name = r.choice(ENC_ALIASES[enc])
        attack = self.enc_attack(r, enc, cid)
        how = r.choice(["startup", "options", "options-escaped", "set", "set-names", "pipelined", "pipelined-ext",
                        "set_config"])
        startup = None
        steps: list[Step] = []
        if how == "startup":
            startup = {"client_encoding": name}
        elif how == "options":
            startup = {"options": r.choice([f"-c client_encoding={name}", f"--client_encoding={name}",
                                            f"--client-encoding={name}", f"-cclient_encoding={name}"])}
        elif how == "options-escaped":
            startup = {"options": f"-c client\\_encoding={name}"}
        elif how == "set":
            steps.append(S(r.choice([f"SET client_encoding TO '{name}'", f"SET client_encoding = {name}",
                                     f"SET SESSION client_encoding = '{name}'"])))
        elif how == "set-names":
            steps.append(S(f"SET NAMES '{name}'"))
        elif how == "set_config":
            steps.append(S(f"SELECT set_config('client_encoding', '{name}', false)"))
        if how in ("pipelined", "pipelined-ext"):
            s = f"SET client_encoding TO '{name}'"
            if how == "pipelined":
                steps.append(RAW([(q(s), s), (q(attack), repr(attack))], 2))
            else:
                steps.append(RAW([(parse_msg(s), "Parse " + s), (pgwire.bind(), "Bind"), (pgwire.execute(), "Execute"),
                                  (pgwire.sync(), "Sync"), (q(attack), repr(attack))], 2))
        elif r.random() < 0.2:
            steps.append(Step(parse_msg(attack) + pgwire.bind() + pgwire.execute() + pgwire.sync(), 1,
                              "extended: " + repr(attack)))
        else:
            steps.append(S(attack))
        if r.random() < 0.25:  # and an ordinary masked read in that encoding
            inner, _ = self.inner(r, twin)
            steps.append(S(inner))
        return Program(f"client-encoding[{how}]>{enc}", steps, startup=startup, fresh=True, twin=twin)

    def spell_option(self, r, name: str, value: str) -> str:
        n = name
        k = r.random()
        if k < 0.3:  # backslash escapes (pg_split_opts drops the backslash)
            n = "".join(("\\" + ch) if (ch == "_" or r.random() < 0.15) else ch for ch in n)
        elif k < 0.4:
            n = n.upper()
        form = r.random()
        if form < 0.3:
            return f"-c {n}={value}"
        if form < 0.45:
            return f"-c{n}={value}"
        if form < 0.7:
            return f"--{n.replace('_', '-')}={value}"
        if form < 0.85:
            return f"--{n}={value}"
        return f"-c {n}={value}".replace(" ", "\t" if r.random() < 0.5 else "  ")

    def f_options(self, r):
        """Startup `options` (and parameters) in every spelling, then a masked
        read with client_min_messages low enough to see LOG/DEBUG output."""
        twin = False
        opts, names = [], []
        for _ in range(r.randint(1, 2)):
            nm = r.choice(["debug_print_rewritten", "debug_print_parse", "debug_print_plan", "debug_print_rewritten",
                           "role", "session_authorization", "standard_conforming_strings", "trace_sort",
                           "client_min_messages"])
            val = {"role": r.choice(["analytics_team", "bi_readers", "support_team", "pgcloak", "admin"]),
                   "session_authorization": r.choice(["analyst", "support", "admin"]),
                   "standard_conforming_strings": "off", "client_min_messages": r.choice(["log", "debug5", "debug2"]),
                   }.get(nm, "on")
            opts.append(self.spell_option(r, nm, val))
            names.append(nm)
        k = r.random()
        if k < 0.12:
            opts.append(r.choice(["-d 5", "-d5", "-d 3", "-d 4", "-d 2"]))
            names.append("-d")
        elif k < 0.2:
            opts, names = [r.choice(["-d 5", "-d5", "-d 3", "-d 4"])], ["-d"]
        startup = {"options": " ".join(opts)}
        channel = f"startup-options[{','.join(sorted(set(names)))}]"
        if r.random() < 0.2:
            nm = r.choice(["debug_print_rewritten", "Debug_Print_Plan", "DEBUG_PRINT_PARSE", "trace_sort",
                           "client_min_messages", "standard_conforming_strings", "Role"])
            startup = {nm: r.choice(["on", "1", "log", "off"])}
            channel = f"startup-parameter[{nm}]"
        inner, fam = self.inner(r, False)
        if r.random() < 0.5:
            frm, a = self.rel(r)
            inner = f"SELECT {r.choice(['email', 'md5(email)', '*', 'ssn', 'card_number'])} FROM {frm} WHERE {a}.id = {self.a_id}"
            fam = "read"
            self._last_inner = (inner, fam)
        steps = []
        if r.random() < 0.8:
            steps.append(S(r.choice(["SET client_min_messages = log", "SET client_min_messages = debug2"])))
        steps.append(S(inner) if r.random() < 0.7 else self.ext_step(r, inner))
        if "standard_conforming_strings" in startup.get("options", "") or "standard" in "".join(startup):
            steps.append(S(self.backslash_attack(r, str(self.a_id))))
        return Program(f"{channel}>{fam}", steps, startup=startup, fresh=True, twin=twin)

    def ext_step(self, r, sql: str, name: str | None = None, fmt: int | None = None) -> Step:
        name = r.choice(["", "", "s1", "leak_stmt"]) if name is None else name
        portal = r.choice(["", "", "pt"])
        fmt = r.choice([0, 0, 1]) if fmt is None else fmt
        params: list[bytes | None] = []
        types: list[int] = []
        if "@CID_@" in sql and r.random() < 0.5:
            sql = sql.replace("@CID_@", "$1")
            if r.random() < 0.5:
                types = [20]
                params = [struct.pack("!q", 0)]  # patched per run (binary int8)
                pfmt = [1]
            else:
                params = [b"@CID_@"]
                pfmt = [0]
        else:
            pfmt = []
        msgs = [(parse_msg(sql, name, types), f"Parse[{name}] {sql}")]
        if r.random() < 0.3:
            msgs.append((pgwire.msg(b"D", b"S" + name.encode() + b"\x00"), "Describe[S]"))
        msgs.append((pgwire.bind(params, portal=portal, stmt=name, param_formats=pfmt, result_formats=[fmt]),
                     f"Bind(fmt={fmt})"))
        if r.random() < 0.5:
            msgs.append((pgwire.describe_portal(portal), "Describe[P]"))
        if r.random() < 0.3:
            msgs += [(pgwire.execute(portal, 1), "Execute(1)"), (pgwire.execute(portal, 0), "Execute")]
        else:
            msgs.append((pgwire.execute(portal, 0), "Execute"))
        msgs.append((pgwire.sync(), "Sync"))
        st = RAW(msgs, 1)
        if types == [20]:
            st.text = st.text + " [$1 binary int8 = @CID_@]"
            st.data = st.data.replace(struct.pack("!i", 8) + struct.pack("!q", 0), b"@BINCID_@@@@")
        return st

    def f_extended(self, r):
        twin = r.random() < 0.4
        inner, fam = self.inner(r, twin)
        k = r.random()
        if k < 0.7:
            st = self.ext_step(r, inner)
            return Program(f"extended>{fam}", [st], fresh=b"s1" in st.data or b"leak_stmt" in st.data,
                           twin=twin and b"fmt=1" not in st.text.encode())
        # debug2 echoes Parse/Bind
        lvl = r.choice(["debug2", "debug1", "debug5", "log"])
        st = self.ext_step(r, inner, fmt=0)
        return Program(f"extended+client_min_messages={lvl}>{fam}", [S(f"SET client_min_messages = {lvl}"), st],
                       fresh=True, twin=twin)

    def diff_select(self, r) -> str:
        """A SELECT that output masking accepts: one protected table, plain
        columns, WHERE/ORDER BY/LIMIT on unprotected columns only."""
        spelling = r.choice(["customers", "public.customers", "customers", "ONLY customers"])
        alias = r.choice(["", "", " c", " AS t"])
        a = alias.split()[-1] if alias else ""
        qa = (a + ".") if a and r.random() < 0.5 else ""
        if r.random() < 0.3:
            cols = r.choice(["*", f"{a}.*" if a else "*"])
        else:
            pool = list(PROTECTED) + ["id", "created_at"]
            cols = ", ".join(qa + c for c in r.sample(pool, r.randint(1, 6)))
        # Not the twin rows (990101, 990201): the twin check rewrites them
        # while the other role's pass runs.
        lo = r.choice([1, 37, 500, 2000, 9990, 990102, 990202, 990300])
        hi = lo + r.randint(0, 60) if lo < CANARY_MIN else lo + 90
        w = r.choice([f"{qa}id BETWEEN {lo} AND {hi}", f"{qa}id > 990201",
                      f"{qa}id IN ({', '.join(str(r.randint(1, 10000)) for _ in range(5))}, {self.b_id}, {self.d_id})",
                      f"{qa}id < {r.randint(2, 80)} OR {qa}id > 990201",
                      f"{qa}created_at < '2018-03-01' AND {qa}id < 3000"])
        sql = f"SELECT {cols} FROM {spelling}{alias} WHERE {w}"
        if r.random() < 0.8:
            sql += r.choice([f" ORDER BY {qa}id", f" ORDER BY {qa}id DESC", f" ORDER BY {qa}created_at, {qa}id"])
        if r.random() < 0.4:
            sql += f" LIMIT {r.randint(1, 40)}"
            if r.random() < 0.3:
                sql += f" OFFSET {r.randint(0, 5)}"
        return sql

    def f_diff(self, r):
        sql = self.diff_select(r)
        return Program("output-masking-differential", [S(sql)], diff=sql)

    def f_notify(self, r):
        frm, a = self.rel(r)
        c = self.pcol(r, text_only=True)
        return Program("notify", [S(f"LISTEN leak_ch_{self.role}"),
                                  S(f"SELECT pg_notify('leak_ch_{self.role}', {a}.{c}) FROM {frm} WHERE {self.where_id(r, a, False)}"),
                                  S("SELECT 1")], fresh=True)

    def f_payments(self, r):
        twin = r.random() < 0.4
        t = r.choice(["payments", "payments_2025_03", "ONLY payments", "public.payments", "payments_default",
                      "payments *"])
        cid = self.one_id(r, twin)
        x = r.choice(["card_number", "p.card_number", "p", "p::text", "to_jsonb(p)", "p.to_json",
                      "reverse(card_number)", "replace(card_number, '-', '')", "md5(card_number)",
                      "card_number::bigint", "string_agg(card_number, ',')", "replace(card_number, '-', '')::bigint"])
        sql = f"SELECT {x} FROM {t} p WHERE p.customer_id = {cid}"
        if "string_agg" not in x and r.random() < 0.3:
            sql += " ORDER BY p.id"
        if r.random() < 0.3:
            sql = f"SELECT p.id, c.email, p.card_number, c.card_number FROM {t} p JOIN customers c ON c.id = p.customer_id WHERE c.id = {cid}"
        return Program("payments", [S(sql)], twin=twin)

    def f_servercopy(self, r):
        inner, fam = self.inner(r, False)
        k = r.random()
        if k < 0.4:
            steps = [S(f"CREATE TEMP TABLE leak_sc AS {inner}"), S("SELECT * FROM leak_sc")]
        elif k < 0.7:
            steps = [S(f"SELECT * INTO TEMP leak_sc FROM ({inner}) s"), S("TABLE leak_sc")]
        else:
            steps = [S(f"CREATE TEMP TABLE leak_sc AS {inner}"), S("COPY leak_sc TO STDOUT")]
        return Program(f"server-copy>{fam}", steps, fresh=True)

    def f_multi(self, r):
        twin = r.random() < 0.3
        inner, fam = self.inner(r, twin)
        return Program(f"multi-statement>{fam}", [S(r.choice([f"SELECT 1; {inner}; SELECT 2", f"{inner}; {inner}",
                                                                f"BEGIN; {inner}; COMMIT"]))], twin=twin)

    def f_refused(self, r):
        cid = r.choice(self.canaries).id
        sql = r.choice([
            f"DO $$ BEGIN RAISE NOTICE '%', (SELECT email FROM customers WHERE id = {cid}); END $$",
            "SELECT query_to_xml('select email from customers', true, true, '')",
            f"SELECT * FROM ts_stat('SELECT to_tsvector(email) FROM customers WHERE id = {cid}')",
            "SELECT * FROM pg_stats WHERE tablename = 'customers'",
            "SELECT most_common_vals FROM pg_stats WHERE attname = 'email'",
            f"SELECT set_config('application_name', (SELECT email FROM customers WHERE id = {cid}), false)",
            "SELECT name, statement FROM pg_prepared_statements",
            f"CREATE TEMP VIEW leak_v AS SELECT email FROM customers WHERE id = {cid}",
            "SELECT query FROM pg_stat_activity",
        ])
        return Program("refused", [S(sql)], fresh=True)


# =============================================================================================
# Running programs


@dataclass
class Exec:
    capture: bytes
    status: str           # ok | closed | timeout | startup-error | connect-error
    error: str = ""


@dataclass
class Finding:
    """One distinct problem: programs of the same channel (the family up to
    its first '>') whose marker showed up in the same kind of message are
    one finding; the shortest program found is kept as its example."""
    kind: str             # marker | twin | differential | hang | pgcloak-died
    role: str
    family: str
    where: str
    what: str
    program: str
    index: int
    seed: int
    count: int = 1
    classes: set = field(default_factory=set)    # marker classes seen (email.local, ssn, key.hash.ipad, ...)
    variants: set = field(default_factory=set)   # full family names seen

    @property
    def channel(self) -> str:
        return self.family.split(">")[0]

    def key(self) -> tuple:
        where = re.sub(r"\[[A-Z0-9]+\]", "", self.where) if self.kind == "marker" else self.where
        return (self.kind, self.role, self.channel, where)

    def report(self) -> str:
        extra = ""
        if self.classes:
            extra += f"\n    marker classes: {', '.join(sorted(self.classes))}"
        if len(self.variants) > 1:
            extra += f"\n    variants: {', '.join(sorted(self.variants)[:12])}"
        return (f"[{self.kind}] role={self.role} {self.channel} -> {self.where}: {self.what} "
                f"(seen {self.count}x; seed {self.seed}, program {self.role}:{self.index}){extra}\n"
                + "\n".join("    " + ln for ln in self.program.splitlines()))

    def as_dict(self) -> dict:
        d = dict(self.__dict__)
        d["classes"], d["variants"] = sorted(self.classes), sorted(self.variants)
        return d


def _label_class(label: str) -> str:
    """c990101.email.local.hex -> email.local"""
    parts = label.split(".")
    if parts[0].startswith("c99"):
        parts = parts[1:]
    base = [p for p in parts if p not in ("hex", "md5", "b64", "datum", "codes", "to_hex", "sha256", "sha512",
                                          "sha224")]
    return ".".join(base)


TIMING_RX = [
    (re.compile(rb"\d+\.\d+ s\b"), b"N s"), (re.compile(rb"\d+\.\d+ ms\b"), b"N ms"),
    (re.compile(rb"time=\d+\.\d+\.\.\d+\.\d+"), b"time=N"), (re.compile(rb"pg_temp_\d+"), b"pg_temp_N"),
    (re.compile(rb"Buffers: [^\n]*"), b"Buffers: N"), (re.compile(rb"\"(Actual [A-Za-z ]+Time|Planning Time|Execution Time)\": [\d.]+"), b"T"),
    (re.compile(rb"<(Actual-[A-Za-z-]+-Time|Planning-Time|Execution-Time)>[\d.]+"), b"T"),
    (re.compile(rb"(Actual [A-Za-z ]+Time|Planning Time|Execution Time): [\d.]+"), b"T"),
    (re.compile(rb"(Shared|Local|Temp) [A-Za-z ]+Blocks[\"]?: \d+"), b"B"),
    (re.compile(rb"<(Shared|Local|Temp)-[A-Za-z-]+-Blocks>\d+"), b"B"),
    (re.compile(rb"xid/subid/cid: \d+/\d+/\d+"), b"xid"),
]


def normalize_for_twin(data: bytes) -> list:
    """Messages of one run, made comparable with the twin run (timings,
    temporary schema numbers, notification pids)."""
    msgs, rest = split_messages(data)
    out = []
    for t, body in msgs:
        if t in (b"K", b"R"):
            continue
        if t == b"A":
            body = b"\0\0\0\0" + body[4:]
        if t in (b"E", b"N"):
            fl = _fields(body)
            sev = dict(fl).get("V", b"")
            nf = []
            for k, v in fl:
                if k in ("L",):
                    continue
                for rx, rep in TIMING_RX:
                    v = rx.sub(rep, v)
                if sev.startswith(b"DEBUG"):
                    v = re.sub(rb"\d+", b"N", v)
                nf.append((k, v))
            out.append((t, tuple(nf)))
        else:
            for rx, rep in TIMING_RX:
                body = rx.sub(rep, body)
            out.append((t, body))
    return out


class Runner:
    """Runs programs for one role through pgcloak and collects findings."""

    def __init__(self, host: str, port: int, role: str, password: str, dbname: str, scanner: Scanner,
                 seed: int, step_timeout: float = 10.0, log=None, admin_factory=None,
                 canaries: list[Canary] | None = None):
        self.host, self.port, self.role, self.password, self.dbname = host, port, role, password, dbname
        self.scanner = scanner
        self.seed = seed
        self.step_timeout = step_timeout
        self.base: Wire | None = None
        self.findings: dict[tuple, Finding] = {}
        self.statements = 0
        self.programs = 0
        self.connections = 0
        self.skipped = 0
        self.errors_seen = 0
        self.log = log or (lambda s: None)
        self.a_id, self.b_id, self.d_id = TWIN_IDS[role]
        # Twin check: row A holds twin A's values; for the second run it
        # holds twin B's (same id, so the statement text is identical).
        self.admin_factory = admin_factory
        self.minimise = True  # report a wrapper's leak under the statement it carries, when that leaks alone
        self.admin = None
        self.twin_state = "A"
        by_id = {c.id: c for c in canaries or []}
        self.twins = {"A": by_id.get(self.a_id), "B": by_id.get(self.b_id)}

    # -- connections -----------------------------------------------------------------------
    def connect(self, extra: dict | None = None) -> tuple[Wire | None, Exec | None]:
        self.connections += 1
        try:
            w = Wire(self.host, self.port, timeout=self.step_timeout)
        except OSError as e:
            return None, Exec(b"", "connect-error", str(e))
        params = {"application_name": "leak_oracle", "statement_timeout": "8s"}
        params.update(extra or {})
        try:
            w.startup(self.role, self.dbname, password=self.password, params=params)
        except pgwire.PgError as e:
            cap = w.take()
            w.close()
            return None, Exec(cap, "startup-error", str(e))
        except (pgwire.WireTimeout, pgwire.ConnectionClosed, OSError, ValueError) as e:
            cap = w.take()
            w.close()
            return None, Exec(cap, "startup-error", f"{type(e).__name__}: {e}")
        return w, None

    def base_conn(self) -> Wire | None:
        if self.base is None:
            self.base, _ = self.connect()
            if self.base is not None:
                self.base.take()
        return self.base

    def drop_base(self) -> None:
        if self.base is not None:
            self.base.close()
        self.base = None

    # -- one run of a program --------------------------------------------------------------
    def run_steps(self, w: Wire, steps: list[Step], sub: dict[bytes, bytes]) -> Exec:
        status = "ok"
        err = ""
        last_status = b"I"
        for st in steps:
            data = st.data
            for k, v in sub.items():
                data = data.replace(k, v)
            self.statements += 1
            try:
                w.send(data)
                got = 0
                while got < st.ready:
                    m = w.read_message(self.step_timeout)
                    if m.type == b"Z":
                        got += 1
                        last_status = m.body[:1]
                    elif m.type == b"G":  # COPY FROM STDIN: refuse to send data
                        w.send(pgwire.msg(b"f", b"leak_oracle sends no data\x00"))
                    elif m.type == b"E":
                        self.errors_seen += 1
            except pgwire.WireTimeout as e:
                return Exec(b"", "timeout", f"{st.text[:200]}: {e}")
            except (pgwire.ConnectionClosed, OSError) as e:
                status, err = "closed", f"{type(e).__name__}: {e}"
                break
        if status == "ok" and last_status != b"I":
            try:
                w.send(q("ROLLBACK"))
                while w.read_message(self.step_timeout).type != b"Z":
                    pass
            except Exception as e:  # noqa: BLE001
                status, err = "closed", str(e)
        return Exec(b"", status, err)

    def run_once(self, prog: Program, sub: dict[bytes, bytes]) -> Exec:
        if prog.startup is not None or prog.fresh:
            w, fail = self.connect(prog.startup)
            if w is None:
                return fail
            res = self.run_steps(w, prog.steps, sub)
            res.capture = w.take()
            w.close()
            return res
        w = self.base_conn()
        if w is None:
            return Exec(b"", "connect-error", "base connection")
        w.take()
        res = self.run_steps(w, prog.steps, sub)
        res.capture = w.take()
        if res.status != "ok":
            self.drop_base()
        return res

    def subs(self, cid: int) -> dict[bytes, bytes]:
        return {b"@CID_@": str(cid).encode(), b"@DID_@": str(self.d_id).encode(),
                b"@BINCID_@@@@": struct.pack("!i", 8) + struct.pack("!q", cid)}

    def set_twin(self, which: str) -> None:
        """Puts twin `which` ("A" or "B")'s values into row A (superuser)."""
        if self.twin_state == which or self.admin_factory is None:
            return
        if self.admin is None:
            self.admin = self.admin_factory()
        c = self.twins[which]
        r = c.row()
        self.admin.execute("UPDATE public.customers SET full_name = %s, email = %s, phone = %s, ssn = %s, "
                           "card_number = %s, birth_date = %s, address = %s, notes = %s WHERE id = %s",
                           (r["full_name"], r["email"], r["phone"], r["ssn"], r["card_number"], r["birth_date"],
                            r["address"], r["notes"], self.a_id))
        for k in (1, 2):
            self.admin.execute("UPDATE public.payments SET card_number = %s WHERE id = %s",
                               (c.pay_cards[k - 1], self.a_id * 10 + k))
        self.twin_state = which

    # -- checks ----------------------------------------------------------------------------
    def add(self, f: Finding) -> None:
        k = f.key()
        f.variants.add(f.family)
        old = self.findings.get(k)
        if old is None:
            self.findings[k] = f
            self.log(f"NEW FINDING {f.report()}")
            return
        old.count += 1
        old.classes |= f.classes
        old.variants |= f.variants
        if len(f.program) < len(old.program):
            for a in ("family", "where", "what", "program", "index"):
                setattr(old, a, getattr(f, a))

    def check_markers(self, prog: Program, res: Exec, index: int, sub_text: dict[str, str]) -> bool:
        hits = scan_capture(self.scanner, res.capture)
        if res.error:
            hits += [("client-side error text", lbl, m) for lbl, m in self.scanner.scan(res.error.encode())]
        if hits and self.minimise and prog.inner is not None and prog.inner_family:
            # Minimise: if the statement the wrapper carries leaks on its own
            # (fresh session, simple protocol), that is the finding.
            alone = Program(prog.inner_family, [S(prog.inner)], fresh=True)
            res_alone = self.run_once(alone, self.subs(self.a_id))
            if scan_capture(self.scanner, res_alone.capture):
                return self.check_markers(alone, res_alone, index, sub_text) or True
        by_loc: dict[str, list] = {}
        for loc, label, m in hits:
            by_loc.setdefault(loc, []).append((label, m))
        for loc, found in by_loc.items():
            label, m = found[0]
            self.add(Finding("marker", self.role, prog.family, loc, f"{label}: {m[:48]!r}", prog.text(sub_text),
                             index, self.seed, classes={_label_class(lb) for lb, _ in found}))
        return bool(hits)

    def run_program(self, prog: Program, index: int) -> None:
        self.programs += 1
        # The generator never sends a marker itself (a literal echoed back would be no leak).
        for st in prog.steps:
            if self.scanner.scan(st.data.replace(b"@CID_@", b"").replace(b"@DID_@", b"")):
                self.skipped += 1
                return
        if prog.diff is not None:
            with COMPARE_LOCK:
                self.run_diff(prog, index)
            return
        if prog.twin:
            with COMPARE_LOCK:
                self.run_compared(prog, index)
            return
        self.run_compared(prog, index)

    def run_compared(self, prog: Program, index: int) -> None:
        sub_a = self.subs(self.a_id)
        ta = {"@CID_@": str(self.a_id), "@DID_@": str(self.d_id)}
        if prog.twin:
            self.set_twin("A")
        res_a = self.run_once(prog, sub_a)
        leaked = self.check_markers(prog, res_a, index, ta)
        self.check_status(prog, res_a, index, ta)
        if not prog.twin:
            return
        self.set_twin("B")
        try:
            res_b = self.run_once(prog, sub_a)
        finally:
            self.set_twin("A")
        leaked = self.check_markers(prog, res_b, index, ta) or leaked
        self.check_status(prog, res_b, index, ta)
        if res_a.status != "ok" or res_b.status != "ok" or leaked:
            return  # a marker finding says more than the difference it causes
        na = normalize_for_twin(res_a.capture)
        nb = normalize_for_twin(res_b.capture)
        if na != nb:
            # a stale catalog after DDL (55000) is timing, not data
            if b"55000" in res_a.capture or b"55000" in res_b.capture:
                return
            where, what = _first_difference(na, nb)
            self.add(Finding("twin", self.role, prog.family, where, what, prog.text(ta), index, self.seed))

    def check_status(self, prog: Program, res: Exec, index: int, sub_text) -> None:
        if res.status == "timeout":
            self.add(Finding("hang", self.role, prog.family, "no ReadyForQuery", res.error[:200], prog.text(sub_text),
                             index, self.seed))

    def run_diff(self, prog: Program, index: int) -> None:
        sql = prog.diff
        variants = {
            "simple (output masking)": [S(sql)],
            "wrapped SELECT * FROM (q) s (SQL masking)": [S(f"SELECT * FROM ({sql}) s")],
            "extended protocol (SQL masking)": [RAW([(parse_msg(sql), "Parse"), (pgwire.bind(result_formats=[0]), "Bind"),
                                                    (pgwire.describe_portal(), "Describe"), (pgwire.execute(), "Execute"),
                                                    (pgwire.sync(), "Sync")], 1)],
        }
        results = {}
        for name, steps in variants.items():
            p = Program(prog.family, steps)
            res = self.run_once(p, {})
            self.check_markers(p, res, index, {})
            msgs, _ = split_messages(res.capture)
            rows = [b for t, b in msgs if t == b"D"]
            errs = [dict(_fields(b)) for t, b in msgs if t == b"E"]
            desc = next((_row_desc(b) for t, b in msgs if t == b"T"), [])
            results[name] = (rows, [(n, typ) for n, _, _, typ, _ in desc],
                             [(e.get("C"), e.get("M")) for e in errs], res.status)
        names = list(results)
        ref = results[names[0]]
        for other in names[1:]:
            got = results[other]
            if got[2] or ref[2]:
                if got[2] != ref[2]:
                    self.add(Finding("differential", self.role, prog.family, f"{names[0]} vs {other}",
                                     f"errors differ: {ref[2]} vs {got[2]}", sql, index, self.seed))
                continue
            if got[1] != ref[1]:
                self.add(Finding("differential", self.role, prog.family, f"{names[0]} vs {other}",
                                 f"columns differ: {ref[1]} vs {got[1]}", sql, index, self.seed))
            elif got[0] != ref[0]:
                detail = f"{len(ref[0])} vs {len(got[0])} rows"
                for i, (x, y) in enumerate(zip(ref[0], got[0])):
                    if x != y:
                        cx, cy = pgwire.parse_data_row(x), pgwire.parse_data_row(y)
                        for j, (u, v) in enumerate(zip(cx, cy)):
                            if u != v:
                                detail = f"row {i} column {ref[1][j][0].decode()}: {u!r} vs {v!r}"[:300]
                                break
                        break
                self.add(Finding("differential", self.role, prog.family, f"{names[0]} vs {other}", detail, sql,
                                 index, self.seed))

    def close(self) -> None:
        self.drop_base()
        if self.admin is not None:
            self.set_twin("A")
            self.admin.close()
            self.admin = None


def _first_difference(na: list, nb: list) -> tuple[str, str]:
    for i, (x, y) in enumerate(zip(na, nb)):
        if x != y:
            t = x[0].decode("latin-1")
            if x[0] != y[0]:
                def show(m):
                    return dict(m[1]) if m[0] in (b"E", b"N") else m[1][:150]
                return f"message {i}", f"A got {x[0]!r} {show(x)!r}, B got {y[0]!r} {show(y)!r}"[:600]
            if t in ("E", "N"):
                dx, dy = dict(x[1]), dict(y[1])
                for k in sorted(set(dx) | set(dy)):
                    if dx.get(k) != dy.get(k):
                        kind = "Error" if t == "E" else "Notice"
                        return (f"{kind}.{k}", f"A: {dx.get(k, b'')[:150]!r} / B: {dy.get(k, b'')[:150]!r}")
            return {"D": "DataRow", "C": "CommandComplete", "d": "CopyData", "T": "RowDescription",
                    "S": "ParameterStatus"}.get(t, f"message {t}"), f"A: {x[1][:150]!r} / B: {y[1][:150]!r}"
    return "message count", f"A {len(na)} messages, B {len(nb)}"


# =============================================================================================
# Setup: canaries, masked copies, predicates validated against them


PRED_TEMPLATES_TEXT = [
    "{x} = {L}", "{x} IN ({L}, 'zz')", "{x} LIKE '%' || {Lh} || '%'", "{x} ILIKE '%' || upper({Lh}) || '%'",
    "{x} ~ {Lh}", "{x} ~* {Lh}", "{x} SIMILAR TO '%' || {Lh} || '%'", "strpos({x}, {Lh}) > 0",
    "position({Lh} IN {x}) > 0", "md5({x}) = md5({L})", "{x} >= {L} AND {x} <= {L}",
    "{x} BETWEEN {L} AND {L} || 'z'", "reverse({x}) = reverse({L})", "upper({x}) = upper({L})",
    "{x}::bytea = convert_to({L}, 'UTF8')", "{x} COLLATE \"C\" = {L}", "starts_with({x}, {Lp})", "{x} ^@ {Lp}",
    "regexp_like({x}, {Lh})", "regexp_count({x}, {Lh}) > 0", "left({x}, {n}) = {Lp}",
    "substr({x}, {k}, 5) = {Lk}", "length({x}) = {len}", "{x} LIKE {Lp} || '%'", "hashtext({x}) = hashtext({L})",
    "to_tsvector('simple', {x}) @@ plainto_tsquery('simple', {Lh})", "{x} = ANY (ARRAY[{L}])",
    "{x} IS NOT DISTINCT FROM {L}", "lower({x}) LIKE lower('%' || {Lh} || '%')", "split_part({x}, '@', 1) = {Lloc}",
    "replace({x}, '-', '') = replace({L}, '-', '')", "{x} > {Lgt}", "{x}::text LIKE '%' || {Lh} || '%'",
    "{x} <> '' AND {x} = {L}", "NOT ({x} <> {L})", "coalesce({x}, '') = {L}", "{x} ~ ('^' || {Lp})",
]
PRED_TEMPLATES_DATE = [
    "{x} = date {Ld}", "{x} = {Ld}::date", "extract(month FROM {x}) = {m}", "extract(day FROM {x}) = {d}",
    "to_char({x}, 'MM-DD') = {Lmd}", "date_part('doy', {x}) = {doy}", "{x}::text = {Ld}",
    "{x} BETWEEN {Ld}::date - 1 AND {Ld}::date + 1", "{x} > {Ld}::date - 1 AND {x} < {Ld}::date + 1",
    "extract(year FROM {x}) = {y}",
]


def _pred_candidates(c: Canary, role: str) -> list[str]:
    sup = role == "support"
    out = []
    vals = {"email": c.email, "phone": c.phone, "ssn": c.ssn, "card_number": c.card, "address": c.address,
            "notes": c.notes, "full_name": c.full_name}
    hidden = {"email": c.loc[1:8], "phone": re.sub(r"\D", "", c.phone)[1:8], "ssn": c.ssn[:6],
              "card_number": c.card[:9], "address": c.street[0][:8].title(), "notes": c.note_loc[:8],
              "full_name": c.full_name.split()[0][:7]}
    if sup:
        hidden["phone"] = c.phone[3:10]
    for col, v in vals.items():
        if sup and col == "full_name":
            continue
        h = hidden[col]
        k = max(2, v.find(h) + 1) if v.find(h) >= 0 else 2
        gt = v[:-1] if len(v) > 1 else v
        env = dict(x="{a}." + col, L=L(v), Lh=L(h), Lp=L(v[:min(len(v), 8)]), n=min(len(v), 8),
                   k=k, Lk=L(v[k - 1:k + 4]), len=len(v), Lloc=L(v.split("@")[0]), Lgt=L(gt))
        for t in PRED_TEMPLATES_TEXT:
            out.append(t.format(**env))
    bd = c.birth
    env = dict(x="{a}.birth_date", Ld=L(bd.isoformat()), m=bd.month, d=bd.day, Lmd=L(bd.strftime("%m-%d")),
               doy=bd.timetuple().tm_yday, y=bd.year)
    for t in PRED_TEMPLATES_DATE:
        out.append(t.format(**env))
    # whole-row predicates
    out.append("{a}::text LIKE '%' || " + L(c.loc[1:8]) + " || '%'")
    out.append("to_jsonb({a})->>'ssn' = " + L(c.ssn))
    out.append("row_to_json({a})::text LIKE '%' || " + L(c.street[0][:7].title()) + " || '%'")
    out.append("{a}.to_jsonb->>'card_number' = " + L(c.card))
    out.append("({a}).phone = " + L(c.phone))
    return out


def validate_predicates(admin, role: str, canaries: list[Canary], masked_table: str) -> dict[int, list[str]]:
    """Keeps the candidate predicates that are false for every canary row of
    the role's masked copy and true for the canary's raw row."""
    out: dict[int, list[str]] = {}
    for c in canaries:
        keep = []
        for p in _pred_candidates(c, role):
            pm = p.format(a="m")
            pr = p.format(a="r")
            try:
                n_masked = admin.execute(f"SELECT count(*) FROM {masked_table} m WHERE {pm}").fetchone()[0]
                n_raw = admin.execute(f"SELECT count(*) FROM public.customers r WHERE r.id = {c.id} AND {pr}").fetchone()[0]
            except Exception:  # noqa: BLE001 - a template that does not apply to this type
                admin.rollback() if not admin.autocommit else None
                continue
            if n_masked == 0 and n_raw == 1:
                keep.append(p)
        out[c.id] = keep
    return out


# =============================================================================================
# The whole setup, shared by the pytest module and the CLI


@dataclass
class Target:
    host: str
    port: int
    dbname: str
    passwords: dict
    master_key: str
    canaries: list[Canary]
    scanners: dict[str, Scanner]
    preds: dict[str, dict[int, list[str]]]
    admin_factory: object = None  # () -> superuser psycopg connection (autocommit) to the leak database


def prepare_database(admin_conn, canaries: list[Canary]) -> None:
    """Plants the canaries (superuser connection to the leak database)."""
    admin_conn.execute("CREATE EXTENSION IF NOT EXISTS hstore")
    for sql, params in plant_sql(canaries):
        admin_conn.execute(sql, params)


def masked_rows(host, port, role, password, dbname) -> tuple[bytes, bytes]:
    """The canary rows as `role` reads them through pgcloak: output-masked
    and SQL-masked (raw captures)."""
    out = []
    for sql in (f"SELECT * FROM customers WHERE id >= {CANARY_MIN} ORDER BY id",
                f"SELECT * FROM (SELECT * FROM customers WHERE id >= {CANARY_MIN}) s ORDER BY id",
                f"SELECT * FROM payments WHERE customer_id >= {CANARY_MIN} ORDER BY id"):
        w = Wire(host, port)
        w.startup(role, dbname, password=password)
        w.take()
        w.send(q(sql))
        while w.read_message().type != b"Z":
            pass
        out.append(w.take())
        w.close()
    return out


def build_target(host: str, port: int, dbname: str, passwords: dict, master_key: str, admin_factory,
                 canaries: list[Canary]) -> Target:
    """After prepare_database and pgcloak's start: scanners (checked against
    what each role legitimately reads) and validated predicates."""
    scanners, preds = {}, {}
    for role in MASKED_ROLES:
        sc = Scanner(role_needles(role, canaries, master_key))
        caps = masked_rows(host, port, role, passwords[role], dbname)
        for cap in caps:
            hits = scan_capture(sc, cap)
            if hits:
                raise AssertionError(f"{role}: a plain masked read already shows markers (pgcloak leaks, or the "
                                     f"needles are wrong): {hits[:5]}")
            msgs, _ = split_messages(cap)
            if not [b for t, b in msgs if t == b"D"]:
                raise AssertionError(f"{role}: no canary rows through pgcloak: {cap[:500]!r}")
        # the role's masked copy, for validating predicates
        table = f"leak_oracle_masked_{role}"
        with admin_factory() as adm:
            adm.execute(f"DROP TABLE IF EXISTS public.{table}")
            adm.execute(f"CREATE TABLE public.{table} (LIKE public.customers)")
            adm.execute(f"REVOKE ALL ON public.{table} FROM PUBLIC")
            msgs, _ = split_messages(caps[1])
            rows = [pgwire.parse_data_row(b) for t, b in msgs if t == b"D"]
            ncols = len(rows[0])
            with adm.cursor() as cur:
                for row in rows:
                    cur.execute(f"INSERT INTO public.{table} VALUES ({', '.join(['%s'] * ncols)})",
                                [None if v is None else v.decode() for v in row])
            preds[role] = validate_predicates(adm, role, canaries, f"public.{table}")
            # D's predicates hold for A too (D equals A): keep them only for standalone and B/D canaries
        scanners[role] = sc
    return Target(host, port, dbname, passwords, master_key, canaries, scanners, preds, admin_factory)


@dataclass
class PassResult:
    role: str
    programs: int
    statements: int
    connections: int
    seconds: float
    findings: list[Finding]
    skipped: int

    @property
    def rate(self) -> float:
        return self.statements / self.seconds if self.seconds else 0.0


def run_pass(target: Target, role: str, seed: int, n_programs: int | None = None, seconds: float | None = None,
             start_index: int = 0, log=None, alive=None) -> PassResult:
    gen = Generator(seed, role, target.canaries, target.preds[role])
    runner = Runner(target.host, target.port, role, target.passwords[role], target.dbname, target.scanners[role],
                    seed, log=log, admin_factory=target.admin_factory, canaries=target.canaries)
    t0 = time.monotonic()
    i = start_index
    try:
        while True:
            if n_programs is not None and runner.statements >= n_programs:
                break
            if seconds is not None and time.monotonic() - t0 >= seconds:
                break
            prog = gen.program(i)
            runner.run_program(prog, i)
            i += 1
            if alive is not None and i % 200 == 0 and not alive():
                runner.add(Finding("pgcloak-died", role, prog.family, "process", "pgcloak exited",
                                   prog.text(), i, seed))
                break
    finally:
        runner.close()
    return PassResult(role, runner.programs, runner.statements, runner.connections, time.monotonic() - t0,
                      sorted(runner.findings.values(), key=lambda f: (f.kind, f.family, f.where)), runner.skipped)


def format_findings(findings: list[Finding]) -> str:
    return "\n".join(f.report() for f in findings)


# =============================================================================================
# CLI: its own cluster and pgcloak, as the integration fixtures start them


def _cli_environment(workroot: str, log):


    import certs as certs_mod
    from masking_fixture import MASK_KEY, MASK_KEY_ENV, masking_overrides
    from pgcluster import make_cluster
    from proxy import Pgcloak, deep_merge, default_config
    from shop import SHOP_PASSWORDS, load_shop

    certs = certs_mod.generate(os.path.join(workroot, "certs"))
    cluster = make_cluster(workroot, certs)
    cluster.init_and_start()
    log(f"PostgreSQL on port {cluster.port}; loading the shop fixture into {LEAK_DB}")
    shop = load_shop(cluster, LEAK_DB, scale=1, recreate=True)
    canaries = make_canaries()
    with shop.admin() as adm:
        prepare_database(adm, canaries)
    cfg = deep_merge(default_config(cluster, certs), masking_overrides(LEAK_DB))
    wd = os.path.join(workroot, "pgcloak")
    os.makedirs(wd)
    os.environ[MASK_KEY_ENV] = MASK_KEY
    proxy = Pgcloak(wd, cfg, certs).start()
    wait_catalog(proxy.host, proxy.port, SHOP_PASSWORDS["support"])
    target = build_target(proxy.host, proxy.port, LEAK_DB, SHOP_PASSWORDS, MASK_KEY, shop.admin, canaries)
    return cluster, proxy, target


def wait_catalog(host, port, password, timeout=20.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        w = Wire(host, port)
        try:
            w.startup("support", LEAK_DB, password=password)
            msgs = w.simple_query(f"SELECT 1 FROM customers WHERE id = {STANDALONE_IDS[0]}")
            if not pgwire.errors(msgs):
                return
        finally:
            w.close()
        if time.monotonic() > deadline:
            raise AssertionError("the masking catalog did not load")
        time.sleep(0.2)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--minutes", type=float, default=5.0, help="wall time for the pass (both roles together)")
    ap.add_argument("--seed", type=int, default=None)
    ap.add_argument("--roles", default=",".join(MASKED_ROLES))
    ap.add_argument("--statements", type=int, default=None, help="stop each role after this many statements")
    ap.add_argument("--replay", default=None, help="ROLE:INDEX: run one program (with --seed) and print it")
    ap.add_argument("--json", default=None, help="write the findings as JSON to this file")
    ap.add_argument("--keep", action="store_true", help="keep the temporary cluster directory")
    args = ap.parse_args(argv)
    seed = args.seed if args.seed is not None else random.SystemRandom().randrange(1, 2 ** 31)
    import shutil
    import tempfile
    import threading

    def log(s: str) -> None:
        print(s, flush=True)

    root = tempfile.mkdtemp(prefix="pgcloak-leak-", dir="/tmp")
    os.chmod(root, 0o755)
    cluster = proxy = None
    rc = 0
    try:
        cluster, proxy, target = _cli_environment(root, log)
        log(f"seed {seed}; pgcloak {os.environ.get('PGCLOAK_BIN', 'build/proxy/pgcloak')} on port {proxy.port}")
        if args.replay:
            role, idx = args.replay.split(":")
            gen = Generator(seed, role, target.canaries, target.preds[role])
            prog = gen.program(int(idx))
            log(prog.text())
            runner = Runner(target.host, target.port, role, target.passwords[role], target.dbname,
                            target.scanners[role], seed, log=log, admin_factory=target.admin_factory,
                            canaries=target.canaries)
            runner.run_program(prog, int(idx))
            runner.close()
            log(format_findings(list(runner.findings.values())) or "no finding")
            return 1 if runner.findings else 0
        roles = [r for r in args.roles.split(",") if r]
        results: dict[str, PassResult] = {}
        t0 = time.monotonic()
        secs = args.minutes * 60

        def work(role):
            results[role] = run_pass(target, role, seed, n_programs=args.statements, seconds=secs, log=log,
                                     alive=proxy.alive)
        threads = [threading.Thread(target=work, args=(r,)) for r in roles]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        elapsed = time.monotonic() - t0
        total = sum(r.statements for r in results.values())
        all_f = [f for r in results.values() for f in r.findings]
        log("")
        log(f"seed {seed}: {total} statements in {elapsed:.0f} s ({total / elapsed:.1f} statements/s)")
        for role, r in results.items():
            log(f"  {role}: {r.programs} programs, {r.statements} statements, {r.connections} connections, "
                f"{r.rate:.1f} statements/s, {len(r.findings)} distinct findings, {r.skipped} skipped")
        log(f"{len(all_f)} distinct findings")
        if all_f:
            log(format_findings(all_f))
            rc = 1
        if args.json:
            with open(args.json, "w") as f:
                json.dump({"seed": seed, "statements": {r: x.statements for r, x in results.items()},
                           "seconds": elapsed, "findings": [f.as_dict() for f in all_f]}, f, indent=1)
    finally:
        if proxy is not None:
            proxy.terminate()
        if cluster is not None:
            cluster.stop()
        if args.keep:
            log(f"kept {root}")
        else:
            shutil.rmtree(root, ignore_errors=True)
    return rc


if __name__ == "__main__":
    try:
        import psycopg  # noqa: F401 - only to know which python has it
    except ImportError:
        if sys.executable != "/usr/bin/python3" and os.path.exists("/usr/bin/python3"):
            os.execv("/usr/bin/python3", ["/usr/bin/python3"] + sys.argv)
        raise
    sys.exit(main())
