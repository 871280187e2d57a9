#!/usr/bin/env python3
"""Writes the seed corpus of the fuzz targets into tests/fuzz/corpus/<target>/.

Run once and commit the output; run.sh fuzzes a scratch copy, never these
files. Seeds are built here from the protocol docs ("Message Formats"), not
with pgcloak's own encoders, so an encoder bug cannot shape its own seeds.
Every message type is covered, plus a few malformed shapes near each
boundary so the fuzzer starts next to the interesting edges.

Usage: tests/fuzz/make_corpus.py  (rewrites the corpus directories)
"""

import os
import shutil
import struct

HERE = os.path.dirname(os.path.abspath(__file__))
CORPUS = os.path.join(HERE, "corpus")


def i8(v):
    return struct.pack("!b", v)


def u8(v):
    return struct.pack("!B", v)


def i16(v):
    return struct.pack("!h", v)


def i32(v):
    return struct.pack("!i", v)


def u32(v):
    return struct.pack("!I", v)


def s(text):
    """A String field: bytes and the NUL terminator."""
    return (text.encode() if isinstance(text, str) else text) + b"\0"


def value(v):
    """Int32 length + bytes; None is NULL (-1)."""
    if v is None:
        return i32(-1)
    v = v.encode() if isinstance(v, str) else v
    return i32(len(v)) + v


def msg(type_byte, body=b"", length=None):
    """Byte1 type, Int32 length (counting itself), body."""
    return type_byte.encode() + u32(len(body) + 4 if length is None else length) + body


def startup(body, length=None):
    return u32(len(body) + 4 if length is None else length) + body


V3_0 = 3 << 16


def startup_seeds():
    params = s("user") + s("alice") + s("database") + s("shop")
    return {
        "startup_v3": startup(u32(V3_0) + params + b"\0"),
        "startup_v3_app_name": startup(
            u32(V3_0) + params + s("application_name") + s("psql") + s("client_encoding")
            + s("UTF8") + b"\0"),
        "startup_v3_empty_list": startup(u32(V3_0) + b"\0"),
        "startup_v3_1_pq_option": startup(u32(V3_0 | 1) + params + s("_pq_.ext") + s("on") + b"\0"),
        "startup_v2_rejected": startup(u32(2 << 16) + params + b"\0"),
        "startup_unterminated": startup(u32(V3_0) + params),
        "startup_name_without_value": startup(u32(V3_0) + s("user")),
        "startup_trailing_bytes": startup(u32(V3_0) + params + b"\0" + b"xx"),
        "startup_replication": startup(u32(V3_0) + s("user") + s("rep") + s("replication")
                                       + s("database") + b"\0"),
        "ssl_request": startup(i32(80877103)),
        "ssl_request_too_long": startup(i32(80877103) + i32(0)),
        "ssl_request_then_query": startup(i32(80877103)) + msg("Q", s("select 1")),
        "gssenc_request": startup(i32(80877104)),
        "cancel_request": startup(i32(80877102) + i32(4242) + i32(-559038737)),
        "cancel_request_short": startup(i32(80877102) + i32(4242)),
        "length_below_8": startup(i32(80877103), length=7),
        "length_above_10000": startup(u32(V3_0) + b"\0", length=10001),
        "length_negative": startup(u32(V3_0) + b"\0", length=0x80000000),
    }


def frontend_seeds():
    bind = msg("B", s("") + s("s1") + i16(2) + i16(0) + i16(1) + i16(2) + value("42")
               + value(None) + i16(1) + i16(1))
    parse = msg("P", s("s1") + s("select * from t where id = $1 and x = $2") + i16(2) + u32(23)
                + u32(0))
    describe = msg("D", b"P" + s(""))
    execute = msg("E", s("") + i32(0))
    sync = msg("S")
    return {
        "query": msg("Q", s("select 1")),
        "query_multi": msg("Q", s("begin; update t set a = 1; commit")),
        "parse": parse,
        "bind": bind,
        "bind_single_format": msg("B", s("p") + s("") + i16(1) + i16(1) + i16(3) + value("a")
                                  + value("") + value(None) + i16(0)),
        "describe_statement": msg("D", b"S" + s("s1")),
        "describe_portal": describe,
        "execute": execute,
        "sync": sync,
        "flush": msg("H"),
        "close_statement": msg("C", b"S" + s("s1")),
        "close_portal": msg("C", b"P" + s("")),
        "terminate": msg("X"),
        "copy_data": msg("d", b"1\tfoo\n2\tbar\n"),
        "copy_done": msg("c"),
        "copy_fail": msg("f", s("aborted by user")),
        "function_call": msg("F", u32(1598) + i16(1) + i16(1) + i16(2) + value(b"\0\0\0\1")
                             + value(None) + i16(1)),
        "password_message": msg("p", s("md5" + "0" * 32)),
        "sasl_initial_response": msg("p", s("SCRAM-SHA-256") + value("n,,n=,r=rOprNGfwEbeRWgbNEkqO")),
        "sasl_initial_response_null": msg("p", s("SCRAM-SHA-256") + i32(-1)),
        "sasl_response": msg("p", b"c=biws,r=rOprNGfwEbeRWgbNEkqO,p=dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVQ="),
        "extended_batch": parse + bind + describe + execute + sync,
        "bind_negative_count": msg("B", s("") + s("") + i16(0) + i16(-1) + i16(0)),
        "bind_negative_length": msg("B", s("") + s("") + i16(0) + i16(1) + i32(-2) + i16(0)),
        "describe_bad_kind": msg("D", b"X" + s("s1")),
        "length_below_4": msg("Q", s("select 1"), length=3),
        "sync_with_body": msg("S", b"\0"),
    }


def backend_seeds():
    ready = msg("Z", b"I")
    row_description = msg("T", i16(2)
                          + s("id") + u32(16384) + i16(1) + u32(23) + i16(4) + i32(-1) + i16(0)
                          + s("email") + u32(16384) + i16(2) + u32(25) + i16(-1) + i32(-1) + i16(0))
    data_row = msg("D", i16(2) + value("1") + value("alice@example.com"))
    complete = msg("C", s("SELECT 1"))
    error = msg("E", b"S" + s("ERROR") + b"V" + s("ERROR") + b"C" + s("42P01") + b"M"
                + s('relation "x" does not exist') + b"P" + s("15") + b"F" + s("parse_relation.c")
                + b"L" + s("1392") + b"R" + s("parserOpenTable") + b"\0")
    return {
        # Codes with no data after them: Kerberos V5, cleartext, GSS, SSPI.
        "auth_codes_without_data": msg("R", i32(2)) + msg("R", i32(3)) + msg("R", i32(7))
        + msg("R", i32(9)),
        "auth_md5": msg("R", i32(5) + b"\x01\x02\x03\x04"),
        "auth_gss_continue": msg("R", i32(8) + b"\x60\x82token"),
        "auth_sasl": msg("R", i32(10) + s("SCRAM-SHA-256-PLUS") + s("SCRAM-SHA-256") + b"\0"),
        "auth_sasl_continue": msg("R", i32(11) + b"r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096"),
        "auth_sasl_final": msg("R", i32(12) + b"v=6rriTRBi23WpRR/wtup+mMhUZUn/dB5nLTJRsjl95G4="),
        "auth_unknown_code": msg("R", i32(6)),
        "backend_key_data": msg("K", i32(4242) + i32(-559038737)),
        "parameter_status": msg("S", s("server_version") + s("15.4")),
        "ready_for_query_bad": msg("Z", b"X"),
        "empty_messages": msg("1") + msg("2") + msg("3") + msg("n") + msg("s") + msg("I") + msg("c"),
        "parameter_description": msg("t", i16(2) + u32(23) + u32(25)),
        "row_description": row_description,
        "data_row": data_row,
        "data_row_null_and_empty": msg("D", i16(3) + value(None) + value("") + value("x")),
        "data_row_negative_length": msg("D", i16(1) + i32(-2)),
        "data_row_count_too_big": msg("D", i16(3) + value("a")),
        "command_complete": complete,
        "error_response": error,
        "notice_response": msg("N", b"S" + s("WARNING") + b"C" + s("01000") + b"M" + s("careful")
                               + b"\0"),
        "notification_response": msg("A", i32(77) + s("channel") + s("payload")),
        "copy_in_response": msg("G", i8(0) + i16(2) + i16(0) + i16(0)),
        "copy_out_response": msg("H", i8(1) + i16(1) + i16(1)),
        "copy_both_response": msg("W", i8(0) + i16(0)),
        "copy_data": msg("d", b"1\tfoo\n"),
        "function_call_response": msg("V", value(b"\0\0\0\x2a")) + msg("V", i32(-1)),
        "negotiate_protocol_version": msg("v", i32(0) + i32(1) + s("_pq_.ext")),
        "simple_query_response": row_description + data_row + complete + ready,
        "startup_response": msg("R", i32(0)) + msg("S", s("client_encoding") + s("UTF8"))
        + msg("K", i32(1) + i32(2)) + ready,
    }


def write(target, seeds):
    directory = os.path.join(CORPUS, target)
    shutil.rmtree(directory, ignore_errors=True)
    os.makedirs(directory)
    for name, data in sorted(seeds.items()):
        with open(os.path.join(directory, name), "wb") as f:
            f.write(data)
    print(f"{target}: {len(seeds)} seeds")


def main():
    write("fuzz_startup", startup_seeds())
    write("fuzz_frontend", frontend_seeds())
    write("fuzz_backend", backend_seeds())


if __name__ == "__main__":
    main()
