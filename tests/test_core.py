"""The pure core (and the small stdlib-only layers around it): plain unit tests and properties.

Everything here runs without a network or a server: names, retries, redirects, ranges, segment
plans, digests, the rate limiter, option parsing, `.part` files and the batch index.
"""
from __future__ import annotations

import ast
import base64
import errno
import hashlib
import itertools
import json
import os
import random
import subprocess
import sys
import threading
import unicodedata
from email.utils import format_datetime
from datetime import datetime, timezone
from pathlib import Path
from urllib.parse import quote

import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from downloader.config import Options, parse_duration, parse_header, parse_rate, parse_size
from downloader.core.digests import (Expected, mismatch, parse_checksum, parse_sums_line, server_digests, spelled,
                                     user_digests)
from downloader.core.naming import (MAX_NAME_BYTES, PART_SUFFIX, STATE_DIR, STATE_SUFFIX, disambiguate,
                                    name_from_content_disposition, name_from_url, relative_target, safe_name,
                                    safe_subdir, target_name)
from downloader.core.ranges import (Segment, SegmentPlan, Validator, connections_for, judge, judge_first,
                                    parse_content_range, range_header)
from downloader.core.ratelimit import TokenBucket
from downloader.core.headers import header_text
from downloader.core.redirects import headers_for, next_hop
from downloader.core.results import FAILED, OK, SKIPPED, Result, Results
from downloader.core.retry import RETRYABLE_STATUSES, RetryPolicy, parse_retry_after
from downloader.core.schedule import WAIT, Feed, Scheduler, Start
from downloader.core.sources import Deduplicator, Job, Notice, Rejected, jobs_from_urls, parse_lines
from downloader.errors import DiskError, RedirectError, UsageError
from downloader.index import Entry, Index
from downloader.sink import PartFile, StreamHasher, file_digests

PACKAGE = Path(__file__).resolve().parent.parent / "downloader"
CORE = PACKAGE / "core"
FAST = settings(max_examples=200, deadline=None)
ANY_TEXT = st.text(alphabet=st.characters(blacklist_categories=("Cs",)), max_size=400)
"""Any unicode text without lone surrogates (which cannot come out of a decoded header or URL)."""
SHA256_EMPTY = hashlib.sha256(b"").hexdigest()


def jobs_of(items):
    return [i for i in items if isinstance(i, Job)]


def rejected_of(items):
    return [i for i in items if isinstance(i, Rejected)]


# ======================================================================== core.sources
class TestParseLines:
    def test_plain_list_skips_blanks_comments_and_white_space(self):
        lines = ["\ufeffhttps://h/a.iso\r\n", "\n", "   \n", "# a comment\n", "  # an indented comment\n",
                 "   https://h/b.iso   \r\n", "http://h/c\n"]
        items = list(parse_lines(lines))
        assert items == [Job("https://h/a.iso", line=1), Job("https://h/b.iso", line=6), Job("http://h/c", line=7)]

    def test_bom_is_only_stripped_from_the_first_line(self):
        items = list(parse_lines(["https://h/a\n", "\ufeffhttps://h/b\n"]))
        assert jobs_of(items) == [Job("https://h/a", line=1)]
        assert [r.line for r in rejected_of(items)] == [2]

    def test_first_line_number_can_be_offset(self):
        assert list(parse_lines(["https://h/a"], first_line=10)) == [Job("https://h/a", line=10)]

    def test_aria2_options_apply_to_the_url_before_them(self):
        digest = "ab" * 32
        lines = ["https://h/a.iso\n", "  out=debian.iso\n", "\tdir=isos\n", "  header=Authorization: Bearer xyz\n",
                 "  header=X-Two:  2 \n", f"  checksum=sha-256={digest}\n",
                 "https://h/b.iso\n", "  out=other.iso\n"]
        items = list(parse_lines(lines))
        assert items == [
            Job("https://h/a.iso", line=1, name="debian.iso", subdir="isos",
                headers=(("Authorization", "Bearer xyz"), ("X-Two", "2")), checksum=f"sha-256={digest}"),
            Job("https://h/b.iso", line=7, name="other.iso"),
        ]

    def test_option_keys_are_case_insensitive(self):
        assert list(parse_lines(["https://h/a", "  OUT=x.bin"])) == [Job("https://h/a", line=1, name="x.bin")]

    def test_indented_line_that_is_not_key_value_is_a_url(self):
        items = list(parse_lines(["https://h/a", "   https://h/b?x=1", "  http://h/c"]))
        assert [j.url for j in jobs_of(items)] == ["https://h/a", "https://h/b?x=1", "http://h/c"]
        assert all(j.name is None for j in jobs_of(items))

    def test_option_line_before_any_url_is_rejected(self):
        items = list(parse_lines(["  out=x.iso", "https://h/a"]))
        assert items == [Rejected(1, "out=x.iso", "option line with no URL before it"), Job("https://h/a", line=2)]

    @pytest.mark.parametrize("junk, reason", [
        ("ftp://x", "not an http(s) URL"),
        ("not a url", "white space"),
        ("http://", "no host"),
        ("http://host:99999/", "not a URL"),
        ("https://h/a file.iso", "white space"),
        ("example.org/a.iso", "no http:// or https://"),
    ])
    def test_junk_line_is_rejected_with_its_number_and_text_and_the_rest_still_run(self, junk, reason):
        items = list(parse_lines(["https://h/1", "# c", junk, "https://h/2"]))
        assert jobs_of(items) == [Job("https://h/1", line=1), Job("https://h/2", line=4)]
        [bad] = rejected_of(items)
        assert (bad.line, bad.text) == (3, junk)
        assert reason in bad.reason
        assert "line 3" in str(bad) and repr(junk) in str(bad)

    @pytest.mark.parametrize("option, text", [
        ("out=", "out="), ("dir=", "dir="), ("header=NoColon", "NoColon"), ("header=Bad Name: v", "Bad Name: v"),
        ("checksum=sha-256=abc", "sha-256=abc"), ("checksum=crc32=00", "crc32=00"),
    ])
    def test_bad_option_value_is_rejected_but_its_url_still_runs(self, option, text):
        items = list(parse_lines(["https://h/a", "  " + option]))
        assert jobs_of(items) == [Job("https://h/a", line=1)]
        [bad] = rejected_of(items)
        assert (bad.line, bad.text) == (2, text)

    def test_unsupported_aria2_option_is_a_notice_not_a_rejection(self):
        items = list(parse_lines(["https://h/a", "  split=5", "  out=a.bin"]))
        assert rejected_of(items) == []
        [notice] = [i for i in items if isinstance(i, Notice)]
        assert notice.line == 2 and "split" in str(notice) and "line 2" in str(notice)
        assert jobs_of(items) == [Job("https://h/a", line=1, name="a.bin")]

    def test_streams_from_an_endless_input_with_one_line_of_look_ahead(self):
        consumed = itertools.count()

        def endless():
            for n in itertools.count():
                next(consumed)
                yield f"https://h/{n}\n"
                if n % 2:
                    yield "  out=x\n"

        jobs = list(itertools.islice(parse_lines(endless()), 3))
        assert [j.url for j in jobs] == ["https://h/0", "https://h/1", "https://h/2"]
        assert next(consumed) <= 5  # the fourth URL was the look-ahead; nothing beyond was read

    def test_jobs_from_urls_checks_each_url_and_passes_jobs_through(self):
        job = Job("https://h/z", name="z")
        items = list(jobs_from_urls(["https://h/a", "ftp://h/b", job]))
        assert items[0] == Job("https://h/a")
        assert isinstance(items[1], Rejected) and items[1].text == "ftp://h/b"
        assert items[2] is job


class TestDeduplicator:
    def test_first_time_only_once_per_url(self):
        seen = Deduplicator()
        assert seen.first_time("https://h/a") is True
        assert seen.first_time("https://h/b") is True
        assert seen.first_time("https://h/a") is False
        assert seen.first_time("https://h/A") is True  # paths are case-sensitive

    def test_survives_text_that_is_not_valid_utf8(self):
        seen = Deduplicator()
        assert seen.first_time("https://h/\udcff") is True
        assert seen.first_time("https://h/\udcff") is False

    @FAST
    @given(st.lists(ANY_TEXT, max_size=30))
    def test_agrees_with_a_set(self, urls):
        seen, plain = Deduplicator(), set()
        for url in urls:
            assert seen.first_time(url) == (url not in plain)
            plain.add(url)


# ======================================================================== core.headers
class TestHeaderText:
    # how each library hands over a header's bytes: http.client (requests) as Latin-1, aiohttp as
    # UTF-8 with surrogateescape
    @pytest.mark.parametrize("text", ["café.bin", "آب.txt", "Straße naïve", "€ 😀", "文件.pdf"])
    def test_utf8_bytes_read_the_same_from_every_library(self, text):
        raw = text.encode("utf-8")
        assert header_text(raw.decode("latin-1")) == header_text(raw.decode("utf-8", "surrogateescape")) == text

    @pytest.mark.parametrize("raw, text", [(b"caf\xe9.pdf", "café.pdf"), (b"\xff\xfe", "ÿþ")])
    def test_other_bytes_read_as_latin1_from_every_library(self, raw, text):
        assert header_text(raw.decode("latin-1")) == header_text(raw.decode("utf-8", "surrogateescape")) == text

    @pytest.mark.parametrize("value", ["", "attachment; filename=a.txt", "/p?q=%C3%A9", "\t x"])
    def test_ascii_is_left_alone(self, value):
        assert header_text(value) == value


# ======================================================================== core.naming
def assert_single_safe_component(name: str, dest: Path) -> None:
    assert name
    assert "/" not in name and "\\" not in name and "\x00" not in name
    assert name not in (".", "..")
    assert not any(unicodedata.category(c) == "Cc" for c in name), repr(name)
    assert len(name.encode("utf-8")) <= MAX_NAME_BYTES
    assert Path(dest, name).resolve().parent == dest.resolve()
    assert Path(dest, name + STATE_SUFFIX).name == name + STATE_SUFFIX


class TestNaming:
    @pytest.mark.parametrize("cd, name", [
        ('attachment; filename="report.pdf"', "report.pdf"),
        ("attachment; filename=plain.txt", "plain.txt"),
        ("attachment; filename*=UTF-8''na%C3%AFve%20file.txt; filename=\"fallback.txt\"", "naïve file.txt"),
        ("attachment; filename=\"fallback.txt\"; filename*=UTF-8''na%C3%AFve%20file.txt", "naïve file.txt"),
        ("attachment; filename*=utf-8'en'%E2%82%AC%20rates.txt", "€ rates.txt"),
        ("attachment; filename*=ISO-8859-1''caf%E9.txt", "café.txt"),
        ('attachment; filename="../../etc/passwd"', "passwd"),
        ('attachment; filename="C:\\\\Windows\\\\evil.exe"', "evil.exe"),
    ])
    def test_name_from_content_disposition(self, cd, name):
        assert target_name("https://h/from-url.bin", cd) == name

    @pytest.mark.parametrize("cd, name", [
        ('filename="report.pdf"', "report.pdf"),
        ("filename=name.bin; charset=x; option=y", "name.bin"),
        ("filename=my file.pdf", "my file.pdf"),
        ('filename = "spaced.pdf"', "spaced.pdf"),
        ("Filename=upper.txt", "upper.txt"),
        ("filename*=UTF-8''%E2%82%AC%20rates.txt", "€ rates.txt"),
        ("filename=\"fallback.txt\"; filename*=UTF-8''na%C3%AFve.txt", "naïve.txt"),
        ("filename*=UTF-8''na%C3%AFve.txt; filename=fallback.txt", "naïve.txt"),
        ('filename="semi;colon.txt"', "semi;colon.txt"),
        ("name=field; filename=form.bin", "form.bin"),
    ])
    def test_a_header_without_a_disposition_type_still_names_the_file(self, cd, name):
        assert target_name("https://h/from-url.bin", cd) == name

    @pytest.mark.parametrize("cd, name", [
        ('filename="../../etc/passwd"', "passwd"),
        ("filename=..", "_"),
        ("filename*=UTF-8''..%2F..%2Fx.sh", "x.sh"),
        ('filename="a\\..\\b.exe"', "b.exe"),
        ("filename*=UTF-8''%00evil%0A.txt", "_evil_.txt"),
    ])
    def test_a_typeless_header_keeps_every_safety_rule(self, cd, name, tmp_path):
        assert target_name("https://h/from-url.bin", cd) == name
        assert_single_safe_component(name, tmp_path)

    @pytest.mark.parametrize("cd, name", [
        ('attachment; filename="café آب.pdf"', "café آب.pdf"),
        ('filename="отчёт.pdf"', "отчёт.pdf"),
        ('attachment; filename="../../naïve.sh"', "naïve.sh"),
    ])
    def test_raw_utf8_in_filename_gives_one_name_in_every_engine(self, cd, name):
        raw = cd.encode("utf-8")
        for spelling in (raw.decode("latin-1"), raw.decode("utf-8", "surrogateescape")):
            assert target_name("https://h/from-url.bin", spelling) == name

    @pytest.mark.parametrize("cd", ["=x", "charset=utf-8", 'filename=""', "name=x; size=3", "; ;", "="])
    def test_a_typeless_header_without_a_name_falls_back_to_the_url(self, cd):
        assert target_name("https://h/dir/from-url.bin", cd) == "from-url.bin"

    @FAST
    @given(st.one_of(ANY_TEXT, ANY_TEXT.map(lambda t: "filename=" + t), ANY_TEXT.map(lambda t: "filename*=" + t),
                     ANY_TEXT.map(lambda t: "filename*=UTF-8''" + quote(t, safe=";=")),
                     ANY_TEXT.map(lambda t: 'filename="' + t + '"; x=y')))
    def test_any_header_text_gives_none_or_a_name_that_is_made_safe(self, cd):
        raw = name_from_content_disposition(cd)
        assert raw is None or (isinstance(raw, str) and raw)
        if raw is not None:
            assert_single_safe_component(safe_name(raw), Path("/tmp/downloader-dest"))

    @pytest.mark.parametrize("cd", [None, "", "inline", "attachment", 'attachment; filename=""', "attachment; name=x"])
    def test_content_disposition_without_a_name_falls_back_to_the_url(self, cd):
        assert target_name("https://h/dir/from-url.bin?x=1", cd) == "from-url.bin"

    def test_unknown_charset_in_filename_star_falls_back_to_filename(self):
        cd = "attachment; filename*=X-NO-SUCH-CHARSET''abc; filename=\"plain.txt\""
        assert name_from_content_disposition(cd) in ("plain.txt", "abc")

    @pytest.mark.parametrize("url, name", [
        ("https://h/dir/My%20File.iso?x=1&y=2#frag", "My File.iso"),
        ("https://h/na%C3%AFve.txt", "naïve.txt"),
        ("https://h", "index.html"),
        ("https://h/", "index.html"),
        ("https://h/dir/", "index.html"),
        ("https://h/?q=a.iso", "index.html"),
        ("https://h/a%2F..%2F..%2Fetc%2Fpasswd", "passwd"),
        ("https://h/..", "_"),
        ("https://h/%2e%2e", "_"),
    ])
    def test_name_from_url(self, url, name):
        assert target_name(url, None) == name

    def test_name_from_url_is_unsanitised_but_decoded(self):
        assert name_from_url("https://h/a%2Fb") == "a/b"

    @pytest.mark.parametrize("raw, expected", [
        ("../../etc/passwd", "passwd"),
        ("..", "_"),
        (".", "_"),
        ("...", "_"),
        ("", "_"),
        ("   ", "_"),
        ("a/b\\c", "c"),
        ("dir\\", "_"),
        ("a\x00b", "a_b"),
        ("a\x01\x1fb\x7f", "a__b_"),
        ("line\nbreak\r.txt", "line_break_.txt"),
        ("rtl\u202eevil.txt", "rtl_evil.txt"),
        ("trailing dots...", "trailing dots"),
        ("  spaced.txt  ", "spaced.txt"),
        (".hidden", ".hidden"),
    ])
    def test_hostile_names_become_one_safe_component(self, raw, expected, tmp_path):
        name = safe_name(raw)
        assert name == expected
        assert_single_safe_component(name, tmp_path)

    @pytest.mark.parametrize("raw", [STATE_DIR, "x" + PART_SUFFIX, "x" + STATE_SUFFIX, PART_SUFFIX, "a.b.part"])
    def test_names_that_clash_with_our_own_files_are_altered(self, raw):
        name = safe_name(raw)
        assert name != raw
        assert name != STATE_DIR
        assert not name.endswith(PART_SUFFIX) and not name.endswith(STATE_SUFFIX)

    @pytest.mark.parametrize("stem_char", ["a", "é", "文", "😀"])
    def test_very_long_names_are_cut_to_fit_keeping_the_extension(self, stem_char, tmp_path):
        for raw in (stem_char * 400 + ".tar.gz", stem_char * 400 + ".iso"):
            name = safe_name(raw)
            assert len(name.encode("utf-8")) <= MAX_NAME_BYTES
            assert len(name.encode("utf-8")) > MAX_NAME_BYTES - 8  # cut, not emptied
            assert name.endswith("." + raw.rsplit(".", 1)[1])
            assert name.startswith(stem_char * 10)
            assert_single_safe_component(name, tmp_path)

    def test_a_long_name_with_a_long_extension_is_cut_from_the_end(self):
        name = safe_name("x" * 300 + "." + "y" * 40)
        assert name == "x" * (MAX_NAME_BYTES - 1)

    def test_the_state_file_of_the_longest_name_still_fits_a_file_system_name(self):
        assert len((safe_name("z" * 1000) + STATE_SUFFIX).encode()) <= 255

    @pytest.mark.parametrize("raw", ["a" * 239 + ".part" + "b" * 11, "a" * 233 + ".part.state" + "b" * 11])
    def test_cutting_a_long_name_never_leaves_a_part_suffix(self, raw):
        name = safe_name(raw)
        assert not name.endswith(PART_SUFFIX) and not name.endswith(STATE_SUFFIX), name[-20:]

    @FAST
    @given(st.from_regex(r"[A-Za-z0-9_-][A-Za-z0-9 _-]{0,40}[A-Za-z0-9_-](\.[a-z0-9]{1,5}){0,2}", fullmatch=True))
    def test_ordinary_names_are_left_alone(self, raw):
        assert safe_name(raw) == raw

    @FAST
    @given(ANY_TEXT)
    def test_any_text_becomes_a_single_safe_component(self, text):
        dest = Path("/tmp/downloader-dest")
        assert_single_safe_component(safe_name(text), dest)
        assert_single_safe_component(target_name("https://h/" + quote(text, safe=""), None), dest)
        assert_single_safe_component(target_name("https://h/d/" + quote(text, safe="/"), None), dest)
        encoded = "attachment; filename*=UTF-8''" + quote(text, safe="")
        assert_single_safe_component(target_name("https://h/x", encoded), dest)
        quoted = 'attachment; filename="' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'
        assert_single_safe_component(target_name("https://h/x", quoted), dest)
        assert_single_safe_component(target_name("https://h/x", text), dest)

    def test_disambiguate_is_deterministic_and_differs_per_url(self):
        a1, a2 = disambiguate("file.iso", "https://h/a"), disambiguate("file.iso", "https://h/a")
        b = disambiguate("file.iso", "https://h/b")
        assert a1 == a2
        assert a1 != b
        assert a1 != "file.iso"
        assert a1.startswith("file-") and a1.endswith(".iso") and b.endswith(".iso")

    def test_disambiguate_without_an_extension_and_for_dot_files(self):
        assert disambiguate("README", "u").startswith("README-")
        assert disambiguate(".bashrc", "u").startswith(".bashrc-")

    def test_disambiguate_keeps_long_names_within_the_limit_and_distinct(self):
        long = safe_name("é" * 300 + ".iso")
        a, b = disambiguate(long, "https://h/a"), disambiguate(long, "https://h/b")
        assert a != b
        for name in (a, b):
            assert len(name.encode()) <= MAX_NAME_BYTES
            assert name.endswith(".iso")

    @pytest.mark.parametrize("raw, expected", [
        ("../../x", "x"),
        ("/abs/path", "abs/path"),
        ("a/./b//c/", "a/b/c"),
        ("a\\..\\b", "b"),
        ("sub/../x", "x"),
        ("a/b/../../../c", "c"),
        ("/srv/x", "srv/x"),
        ("..", None),
        ("/", None),
        ("", None),
        (".downloader", ".downloader_"),
    ])
    def test_safe_subdir_never_escapes(self, raw, expected, tmp_path):
        sub = safe_subdir(raw)
        assert sub == expected
        if sub is not None:
            assert tmp_path.resolve() in (tmp_path / sub).resolve().parents

    @FAST
    @given(ANY_TEXT)
    def test_safe_subdir_stays_inside_for_any_text(self, text):
        dest = Path("/tmp/downloader-dest")
        sub = safe_subdir(text)
        if sub is not None:
            assert dest.resolve() in (dest / sub).resolve().parents
            for part in sub.split("/"):
                assert_single_safe_component(part, dest)

    def test_relative_target_out_wins_and_dir_is_a_safe_prefix(self):
        cd = 'attachment; filename="server.bin"'
        assert relative_target("https://h/u.bin", cd) == "server.bin"
        assert relative_target("https://h/u.bin", cd, out="mine.iso") == "mine.iso"
        assert relative_target("https://h/u.bin", None, out="../../evil", subdir="../isos/./x") == "isos/x/evil"
        assert relative_target("https://h/", None, subdir="/") == "index.html"


# ======================================================================== core.retry
class TestRetry:
    @pytest.mark.parametrize("value, seconds", [("120", 120.0), (" 5 ", 5.0), ("0", 0.0)])
    def test_retry_after_seconds(self, value, seconds):
        assert parse_retry_after(value, now=0.0) == seconds

    def test_retry_after_http_date(self):
        when = datetime(2030, 1, 2, 3, 4, 5, tzinfo=timezone.utc)
        header = format_datetime(when, usegmt=True)
        assert parse_retry_after(header, now=when.timestamp() - 90) == pytest.approx(90.0)
        assert parse_retry_after(header, now=when.timestamp() + 3600) == 0.0

    def test_retry_after_http_date_in_the_past_without_now_is_zero(self):
        assert parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT") == 0.0

    @pytest.mark.parametrize("junk", [None, "", "soon", "-5", "1.5", "Someday, 99 Foo 20xx", "12abc"])
    def test_retry_after_junk_is_none(self, junk):
        assert parse_retry_after(junk, now=0.0) is None

    def test_delay_honours_retry_after_capped(self):
        policy = RetryPolicy(attempts=5, base=100.0, cap=30.0)
        rng = random.Random(1)
        assert policy.delay(1, 0.0, rng) == 0.0
        assert policy.delay(3, 7.5, rng) == 7.5
        assert policy.delay(1, 3600.0, rng) == 30.0

    @FAST
    @given(seed=st.integers(0, 2 ** 32), attempt=st.integers(1, 20),
           base=st.floats(0.001, 5.0), cap=st.floats(0.01, 60.0))
    def test_jitter_is_within_zero_and_the_backoff_step(self, seed, attempt, base, cap):
        delay = RetryPolicy(base=base, cap=cap).delay(attempt, None, random.Random(seed))
        assert 0.0 <= delay <= min(cap, base * 2 ** (attempt - 1))

    def test_jitter_spreads_over_the_whole_step(self):
        policy = RetryPolicy(base=1.0, cap=100.0)
        delays = [policy.delay(3, None, random.Random(seed)) for seed in range(300)]
        assert max(delays) > 3.0 and min(delays) < 1.0  # step is 4 s: full jitter, not a constant

    def test_same_seed_same_delays(self):
        policy = RetryPolicy()
        assert policy.delay(2, None, random.Random(7)) == policy.delay(2, None, random.Random(7))

    def test_should_retry_limits(self):
        policy = RetryPolicy(attempts=3)
        assert [policy.should_retry(n, True) for n in (1, 2, 3, 4)] == [True, True, False, False]
        assert policy.should_retry(1, False) is False
        assert RetryPolicy(attempts=1).should_retry(1, True) is False

    def test_retryable_statuses(self):
        assert {408, 425, 429, 500, 502, 503, 504} <= RETRYABLE_STATUSES
        assert not {400, 401, 403, 404, 410, 416} & RETRYABLE_STATUSES


# ======================================================================== core.redirects
class TestRedirects:
    @pytest.mark.parametrize("url, shown", [
        ("https://alice:pw@h/f", "https://alice:***@h/f"),
        ("https://TOKEN@h:8443/f", "https://***@h:8443/f"),  # a user name alone is often a token
        ("https://h/f?a=b", "https://h/f?a=b"),
        ("http://u:pw@h:99999/f", "http://u:***@h:99999/f"),  # never fails, even on a bad port
    ])
    def test_redact_masks_credentials(self, url, shown):
        from downloader.core.redirects import redact
        assert redact(url) == shown

    def test_netrc_logins(self, tmp_path):
        from downloader.core.redirects import netrc_logins
        path = tmp_path / "netrc"
        path.write_text("machine Files.Example login alice password s3cret\ndefault login anon password x\n")
        path.chmod(0o600)
        assert netrc_logins(str(path)) == {"files.example": ("alice", "s3cret"), "": ("anon", "x")}
        assert netrc_logins(str(tmp_path / "missing")) == {}

    def test_relative_location(self):
        assert next_hop("https://h/a/b", 302, "c", hops=0, max_hops=5).url == "https://h/a/c"
        assert next_hop("https://h/a/b", 301, "/x?y=1", hops=0, max_hops=5).url == "https://h/x?y=1"
        assert next_hop("https://h/a/b", 307, " ../z ", hops=0, max_hops=5).url == "https://h/z"

    def test_scheme_relative_location_is_another_host(self):
        hop = next_hop("https://h/a", 302, "//other/x", hops=0, max_hops=5)
        assert hop.url == "https://other/x" and hop.cross_host

    def test_max_hops(self):
        assert next_hop("https://h/a", 302, "/b", hops=9, max_hops=10).url == "https://h/b"
        assert "more than 10" in next_hop("https://h/a", 302, "/b", hops=10, max_hops=10).refused

    @pytest.mark.parametrize("location", ["ftp://h/x", "file:///etc/passwd", "javascript:alert(1)",
                                          "data:text/plain,hi", "http:///nohost"])
    def test_non_http_targets_are_refused(self, location):
        assert "refused" in next_hop("https://h/a", 302, location, hops=0, max_hops=10).refused
        assert RedirectError("x").retryable is False

    @pytest.mark.parametrize("location", ["//[", "http://h:99999/x", "//h:port/x", "http://a b/x", "//a\x00b/"])
    def test_a_location_that_does_not_parse_is_refused_not_raised(self, location):
        hop = next_hop("https://h/a", 302, location, hops=0, max_hops=10)
        assert hop.refused == f"redirect to an invalid URL refused ({location!r})"

    @pytest.mark.parametrize("location", [None, ""])
    def test_missing_location(self, location):
        assert "without a Location" in next_hop("https://h/a", 302, location, hops=0, max_hops=10).refused

    @pytest.mark.parametrize("start, target, cross", [
        ("https://a/x", "https://b/x", True),
        ("https://a/x", "https://a:8443/x", True),
        ("https://a/x", "http://a/x", True),
        ("https://a:8080/x", "http://a:8080/y", True),
        ("http://a:8080/x", "https://a:8080/y", False),
        ("http://a/x", "https://a/x", True),
        ("https://a/x", "https://a/y", False),
        ("https://a/x", "https://A:443/y", False),
        ("http://a:80/x", "http://a/y", False),
        ("https://a/x", "https://sub.a/x", True),
    ])
    def test_cross_host(self, start, target, cross):
        assert next_hop(start, 302, target, hops=0, max_hops=10).cross_host is cross

    def test_cross_host_is_judged_against_the_first_url(self):
        hop = next_hop("https://b/x", 302, "https://b/y", hops=1, max_hops=10, first_url="https://a/x")
        assert hop.cross_host

    def test_headers_for_drops_credentials_only_across_hosts(self):
        headers = (("Authorization", "Bearer t"), ("COOKIE", "a=b"), ("proxy-authorization", "Basic x"),
                   ("X-Keep", "1"), ("Accept", "*/*"))
        assert headers_for(headers, cross_host=False) == headers
        assert headers_for(headers, cross_host=True) == (("X-Keep", "1"), ("Accept", "*/*"))

    # A Location holding raw UTF-8 bytes, as each HTTP library hands it over: http.client (requests)
    # decodes header bytes as Latin-1, aiohttp as UTF-8 (surrogateescape for bytes that are not).
    @staticmethod
    def spellings(raw: bytes) -> dict[str, str]:
        return {"latin-1 (requests)": raw.decode("latin-1"), "utf-8 (aiohttp)": raw.decode("utf-8", "surrogateescape")}

    @pytest.mark.parametrize("location, expected", [
        ("/gen/café.bin", "https://h/gen/caf%C3%A9.bin"),
        ("/dl/آب.txt?name=آ", "https://h/dl/%D8%A2%D8%A8.txt?name=%D8%A2"),
        ("/Ünïcödé/Straße?q=naïve", "https://h/%C3%9Cn%C3%AFc%C3%B6d%C3%A9/Stra%C3%9Fe?q=na%C3%AFve"),
        ("https://other/😀.png", "https://other/%F0%9F%98%80.png"),
    ])
    def test_a_location_with_raw_utf8_bytes_leads_to_the_same_url_in_every_engine(self, location, expected):
        for library, spelling in self.spellings(location.encode("utf-8")).items():
            assert next_hop("https://h/start", 302, spelling, hops=0, max_hops=5).url == expected, library

    def test_the_mojibake_spelling_is_repaired_not_encoded_twice(self):
        mojibake = "/gen/café.bin".encode("utf-8").decode("latin-1")
        assert mojibake == "/gen/cafÃ©.bin"
        assert next_hop("https://h/a", 302, mojibake, hops=0, max_hops=5).url == "https://h/gen/caf%C3%A9.bin"

    def test_bytes_that_are_not_utf8_are_read_as_latin1_in_every_engine(self):
        for library, spelling in self.spellings(b"/caf\xe9\xff.bin").items():
            assert next_hop("https://h/a", 302, spelling, hops=0, max_hops=5).url == "https://h/caf%C3%A9%C3%BF.bin", \
                library

    @pytest.mark.parametrize("location", [
        "/plain/file.bin?size=10&x=a%20b#frag",
        "https://other:8443/a/b?c=d",
        "/already/caf%C3%A9.bin?q=%D8%A2",
        "/odd/%zz/100%",
        "/chars/~!$&'()*+,;=:@[]{}|^`<>\"",
    ])
    def test_an_ascii_location_is_left_as_it_is(self, location):
        expected = location if location.startswith("https://") else "https://h" + location
        assert next_hop("https://h/a", 302, location, hops=0, max_hops=5).url == expected

    def test_spaces_and_non_ascii_are_escaped_but_the_host_is_not(self):
        assert next_hop("https://h/a", 302, "/my file.txt?q=a b", hops=0, max_hops=5).url \
            == "https://h/my%20file.txt?q=a%20b"
        hop = next_hop("https://h/a", 302, "https://bücher.example/ö", hops=0, max_hops=5)
        assert hop.url == "https://bücher.example/%C3%B6" and hop.cross_host

    @FAST
    @given(st.text(max_size=60))
    def test_any_location_gives_a_hop_never_an_exception(self, location):
        hop = next_hop("https://h/a", 302, location, hops=0, max_hops=5)
        assert hop.refused or (hop.url.startswith(("http://", "https://")) and " " not in hop.url)

    @FAST
    @given(st.text(alphabet=st.characters(blacklist_categories=("Cs",), blacklist_characters="\t\n\r"), max_size=60))
    def test_both_spellings_of_any_text_give_one_ascii_url(self, text):
        location = "/p/" + text
        # text that is itself the UTF-8 of Latin-1 mojibake reads as mojibake (see header_text)
        assume(header_text(location) == location)
        urls = {library: next_hop("https://h/a", 302, spelling, hops=0, max_hops=5).url
                for library, spelling in self.spellings(location.encode("utf-8")).items()}
        assert len(set(urls.values())) == 1, urls
        assert all(url.isascii() and " " not in url for url in urls.values())


# ======================================================================== core.ranges
V = Validator(etag='"abc"', last_modified="Mon, 01 Jan 2024 00:00:00 GMT")


class TestRanges:
    @pytest.mark.parametrize("value, parsed", [
        ("bytes 0-99/200", (0, 99, 200)),
        ("Bytes 100-199/200", (100, 199, 200)),
        ("bytes 0-99/*", (0, 99, None)),
        ("  bytes 5-5/6 ", (5, 5, 6)),
        ("bytes 100-99/200", None),
        ("bytes 0-200/200", None),
        ("items 0-1/2", None),
        ("bytes */200", None),
        ("bytes -5/10", None),
        ("", None),
        (None, None),
    ])
    def test_parse_content_range(self, value, parsed):
        assert parse_content_range(value) == parsed

    def test_range_header(self):
        assert range_header(100, None) == "bytes=100-"
        assert range_header(0, 100) == "bytes=0-99"

    def test_206_that_matches_is_written_at_its_offset(self):
        verdict = judge(206, {"content-range": "bytes 100-199/200", "etag": '"abc"'}, start=100, validator=V, size=200)
        assert (verdict.action, verdict.offset, verdict.size) == ("write", 100, 200)

    def test_206_learns_the_size_when_unknown(self):
        verdict = judge(206, {"content-range": "bytes 10-19/500", "etag": '"abc"'}, start=10, validator=V, size=None)
        assert (verdict.action, verdict.size) == ("write", 500)

    @pytest.mark.parametrize("headers, why", [
        ({"content-range": "bytes 0-199/200", "etag": '"abc"'}, "from 0"),
        ({"content-range": "bytes 100-199/200", "etag": '"other"'}, "changed"),
        ({"content-range": "bytes 100-299/300", "etag": '"abc"'}, "size"),
        ({"etag": '"abc"'}, "Content-Range"),
        ({"content-range": "garbage", "etag": '"abc"'}, "Content-Range"),
        ({"content-range": "bytes 100-199/200", "content-length": "50", "etag": '"abc"'}, "disagrees"),
    ])
    def test_206_that_cannot_be_proven_restarts(self, headers, why):
        verdict = judge(206, headers, start=100, validator=V, size=200)
        assert verdict.action == "restart"
        assert why in verdict.reason

    def test_200_to_a_range_request_restarts_with_a_reason(self):
        verdict = judge(200, {"etag": '"abc"', "content-length": "200"}, start=100, validator=V, size=200)
        assert verdict.action == "restart" and verdict.offset == 0 and verdict.size == 200
        assert "ignored the range" in verdict.reason
        changed = judge(200, {"etag": '"new"'}, start=100, validator=V, size=200)
        assert changed.action == "restart" and "changed" in changed.reason

    @pytest.mark.parametrize("content_range", ["bytes */200", None])
    def test_416_past_the_end_of_a_known_size_is_done(self, content_range):
        headers = {"content-range": content_range} if content_range else {}
        assert judge(416, headers, start=200, validator=V, size=200).action == "done"

    @pytest.mark.parametrize("start, size, content_range", [
        (100, 200, "bytes */200"),
        (200, 200, "bytes */300"),
        (200, None, "bytes */200"),
    ])
    def test_416_otherwise_restarts(self, start, size, content_range):
        verdict = judge(416, {"content-range": content_range}, start=start, validator=V, size=size)
        assert verdict.action == "restart" and verdict.offset == 0
        assert "416" in verdict.reason or "300 bytes" in verdict.reason

    def test_unexpected_status_restarts(self):
        assert judge(204, {}, start=0, validator=V, size=10).action == "restart"

    def test_a_first_200_is_the_whole_file_on_one_connection_unless_ranges_are_offered(self):
        plain = judge_first(200, {"content-length": "4000", "etag": '"e"'}, segments=4, min_segment=1000)
        assert (plain.size, plain.carried_end, plain.connections, plain.whole, plain.refused) == \
            (4000, None, 1, True, "")
        offered = judge_first(200, {"content-length": "4000", "etag": '"e"', "accept-ranges": "bytes"},
                              segments=4, min_segment=1000)
        assert offered.connections == 4 and offered.validator == Validator('"e"')
        unprovable = judge_first(200, {"content-length": "4000", "accept-ranges": "bytes"}, segments=4,
                                 min_segment=1000)
        assert unprovable.connections == 1  # without a validator a piece cannot be proven to belong

    def test_a_first_206_carries_its_piece_and_tells_the_size(self):
        opening = judge_first(206, {"content-range": "bytes 0-999/4000", "etag": '"e"'}, segments=4,
                              min_segment=1000)
        assert (opening.size, opening.carried_end, opening.connections, opening.whole) == (4000, 1000, 4, False)
        small = judge_first(206, {"content-range": "bytes 0-99/100", "etag": '"e"'}, segments=4, min_segment=1000)
        assert (small.size, small.carried_end, small.connections, small.whole) == (100, 100, 1, True)

    def test_a_first_416_is_an_empty_file_only_when_it_says_so(self):
        empty = judge_first(416, {"content-range": "bytes */0"}, segments=4, min_segment=1000)
        assert (empty.size, empty.carried_end, empty.refused) == (0, 0, "")
        assert "HTTP 416" in judge_first(416, {"content-range": "bytes */10"}, segments=4, min_segment=1000).refused

    @pytest.mark.parametrize("status, headers, said, disagree", [
        (206, {"content-range": "bytes 0-99/200", "content-length": "50"}, "disagrees with its Content-Range", True),
        (206, {"content-range": "bytes 5-99/200"}, "Content-Range 'bytes 5-99/200'", False),
        (206, {"content-range": "bytes 0-99/*"}, "unexpected HTTP 206", False),
        (204, {}, "unexpected HTTP 204", False),
    ])
    def test_a_first_answer_that_cannot_start_a_file_says_why(self, status, headers, said, disagree):
        opening = judge_first(status, headers, segments=4, min_segment=1000)
        assert said in opening.refused and opening.lengths_disagree is disagree

    def test_if_range_prefers_a_strong_etag(self):
        assert V.if_range() == '"abc"'

    def test_weak_etag_is_not_used_for_if_range_last_modified_is(self):
        weak = Validator(etag='W/"abc"', last_modified="Mon, 01 Jan 2024 00:00:00 GMT")
        assert weak.if_range() == "Mon, 01 Jan 2024 00:00:00 GMT"
        assert Validator(etag='W/"abc"').if_range() is None
        assert Validator().if_range() is None

    def test_weak_etag_validator_is_judged_by_last_modified(self):
        weak = Validator(etag='W/"abc"', last_modified="Mon, 01 Jan 2024 00:00:00 GMT")
        same = {"content-range": "bytes 10-19/20", "etag": 'W/"zzz"', "last-modified": weak.last_modified}
        other = dict(same, **{"last-modified": "Tue, 02 Jan 2024 00:00:00 GMT"})
        assert judge(206, same, start=10, validator=weak, size=20).action == "write"
        assert judge(206, other, start=10, validator=weak, size=20).action == "restart"

    def test_validator_json_round_trip(self):
        assert Validator.from_json(V.to_json()) == V
        assert Validator.from_json(None) == Validator()

    @pytest.mark.parametrize("args, n", [
        ((None, True, 4, 10), 1),
        ((1000, False, 4, 10), 1),
        ((1000, True, 1, 10), 1),
        ((1000, True, 4, 10), 4),
        ((25, True, 4, 10), 2),
        ((5, True, 4, 10), 1),
        ((0, True, 4, 10), 1),
    ])
    def test_connections_for(self, args, n):
        assert connections_for(*args) == n


class PlanModel:
    """Drives a SegmentPlan like connections do and counts how often each byte is written."""

    def __init__(self, plan: SegmentPlan, counts: bytearray) -> None:
        self.plan, self.counts = plan, counts
        self.owned: list[Segment] = []
        self.pending: dict[int, tuple[Segment, int, int]] = {}

    def claim(self, piece: int | None = None) -> None:
        active_before = self.plan.active
        lowest = min((s.cursor for s in self.plan.segments if not s.owned and s.remaining), default=None)
        seg = self.plan.claim(piece)
        if seg is None:
            assert lowest is None or active_before >= self.plan.max_connections
            return
        assert seg.owned and seg not in self.owned
        assert active_before < self.plan.max_connections
        assert seg.pos == seg.cursor == lowest, "pieces go out in file order"
        assert piece is None or seg.end - seg.pos <= piece
        self.owned.append(seg)

    def request(self, index: int, piece: int | None) -> None:
        free = [s for s in self.owned if id(s) not in self.pending]
        if not free:
            return
        seg = free[index % len(free)]
        req_end = self.plan.request(seg, piece)
        assert seg.pos <= req_end <= seg.end
        assert piece is None or req_end - seg.pos <= piece

    def reserve(self, index: int, length: int) -> None:
        free = [s for s in self.owned if id(s) not in self.pending]
        if not free:
            return
        seg = free[index % len(free)]
        offset, n = self.plan.reserve(seg, length)
        assert offset == seg.pos and 0 <= n <= length
        assert offset + n <= seg.req_end, "wrote past what the request asked for"
        self.pending[id(seg)] = (seg, offset, n)

    def write(self, index: int) -> None:
        if not self.pending:
            return
        key = sorted(self.pending)[index % len(self.pending)]
        seg, offset, n = self.pending.pop(key)
        for i in range(offset, offset + n):
            self.counts[i] += 1
            assert self.counts[i] == 1, f"byte {i} written twice"
        self.plan.written(seg, n)

    def fail(self, index: int) -> None:
        """The owner lets go while its last chunk is still queued for the disk (write-behind):
        the chunk lands later, and nobody may fetch those bytes again meanwhile."""
        owned_pending = [key for key in sorted(self.pending) if self.pending[key][0] in self.owned]
        if not owned_pending:
            return
        seg = self.pending[owned_pending[index % len(owned_pending)]][0]
        self.plan.release(seg)
        self.owned.remove(seg)

    def release(self, index: int) -> None:
        free = [s for s in self.owned if id(s) not in self.pending]
        if not free:
            return
        seg = free[index % len(free)]
        self.plan.release(seg)
        self.owned.remove(seg)

    def check(self) -> None:
        for seg in self.owned:
            assert seg.req_end <= seg.end, f"bytes {seg.end}-{seg.req_end} were asked for twice"
        live = sorted((s.pos, s.end) for s in self.plan.segments if s.pos < s.end)
        for (_, end), (start, _) in zip(live, live[1:]):
            assert end <= start, f"segments overlap: {live}"
        missing = self.plan.missing()
        for (_, end), (start, _) in zip(missing, missing[1:]):
            assert end <= start, f"missing ranges overlap: {missing}"
        in_missing = bytearray(len(self.counts))
        for a, b in missing:
            assert 0 <= a < b <= len(self.counts)
            for i in range(a, b):
                in_missing[i] += 1
        for i, (w, m) in enumerate(zip(self.counts, in_missing)):
            assert w + m == 1, f"byte {i}: written {w} times, in missing {m} times"
        assert self.plan.fetched() == sum(self.counts)

    def drain(self, rng: random.Random) -> None:
        for key in list(self.pending):
            self.write(sorted(self.pending).index(key))
        for seg in list(self.owned):
            self.plan.release(seg)
        self.owned.clear()
        for _ in range(len(self.counts) + 10):
            seg = self.plan.claim()
            if seg is None:
                break
            self.owned.append(seg)
            while seg.pos < seg.end:
                self.request(0, rng.choice([None, rng.randint(1, 300)]))
                while seg.pos < seg.req_end:
                    self.reserve(0, rng.randint(1, 64))
                    self.write(0)
            self.release(0)
            self.check()


class TestSegmentPlan:
    @FAST
    @given(size=st.integers(0, 1500), max_connections=st.integers(1, 6),
           start=st.sampled_from(["whole", "first-response", "one-stream", "resumed"]), data=st.data())
    def test_any_interleaving_writes_every_byte_exactly_once(self, size, max_connections, start, data):
        counts = bytearray(size)
        first = None
        if start == "resumed":
            cuts = sorted(data.draw(st.lists(st.integers(0, size), max_size=8), label="cuts"))
            missing = [(a, b) for a, b in zip(cuts[::2], cuts[1::2])]
            for i in range(size):
                counts[i] = 0 if any(a <= i < b for a, b in missing) else 1
            plan = SegmentPlan(size, missing, max_connections=max_connections)
        elif start == "whole":
            plan = SegmentPlan(size, max_connections=max_connections)
        else:
            # as Transfer does with the first response: it carries [0, cut); a segmented file's
            # rest is up for claims, a one-stream file's stays with that connection
            cut = data.draw(st.integers(0, size), label="first response end")
            end = size if start == "one-stream" else cut
            plan = SegmentPlan(size, [(end, size)], max_connections=max_connections)
            first = Segment(0, end, owned=True)
            first.req_end = cut
            plan.add(first)
        model = PlanModel(plan, counts)
        if first is not None:
            model.owned.append(first)
        model.check()
        ops = ["claim", "request", "request-all", "reserve", "write", "release", "fail"]
        steps = data.draw(st.lists(st.tuples(st.sampled_from(ops), st.integers(0, 10), st.integers(1, 400)),
                                   max_size=80), label="steps")
        for op, index, length in steps:
            if op == "claim":
                model.claim(length if index % 2 else None)  # a piece, or all of the lowest range
            elif op.startswith("request"):
                model.request(index, None if op == "request-all" else length)
            elif op == "reserve":
                model.reserve(index, length)
            elif op == "write":
                model.write(index)
            elif op == "fail":
                model.fail(index)
            else:
                model.release(index)
            model.check()
            assert plan.active <= max(max_connections, 1)
        model.drain(random.Random(size))
        assert plan.done()
        assert plan.missing() == []
        assert all(c == 1 for c in counts)
        assert plan.fetched() == size

    def test_connections_take_pieces_in_file_order(self):
        plan = SegmentPlan(1000, max_connections=3)
        first, second, third = plan.claim(300), plan.claim(300), plan.claim(300)
        assert [(s.pos, s.end) for s in (first, second, third)] == [(0, 300), (300, 600), (600, 900)]
        assert plan.claim(300) is None  # cap reached
        plan.release(second)  # nothing of it arrived: its bytes are the lowest again
        again = plan.claim(100)
        assert (again.pos, again.end) == (300, 400)
        for seg in (first, third, again):
            plan.request(seg, None)
        assert plan.unrequested() == 1000 - 300 - 300 - 100

    def test_a_finished_connection_takes_the_next_piece(self):
        plan = SegmentPlan(1000, max_connections=2)
        first, second = plan.claim(400), plan.claim(400)
        for seg in (first, second):
            plan.request(seg, None)
            plan.written(seg, plan.reserve(seg, 400)[1])
        plan.release(second)
        assert plan.prefix() == 800 and plan.missing() == [(800, 1000)]
        third = plan.claim(400)
        assert (third.pos, third.end) == (800, 1000)

    def test_bytes_asked_for_are_never_handed_out_again(self):
        plan = SegmentPlan(1000, max_connections=2)
        first = plan.claim()  # the whole file, as a one-stream download asks for it
        assert plan.request(first, None) == 1000
        assert not plan.can_help() and plan.claim() is None

    def test_a_failed_piece_keeps_its_queued_bytes_and_frees_the_rest(self):
        plan = SegmentPlan(1000, max_connections=2)
        seg = plan.claim(500)
        plan.request(seg, None)
        assert plan.reserve(seg, 200) == (0, 200)  # queued for the disk, not written yet
        plan.release(seg)  # the connection broke
        again = plan.claim(500)
        assert (again.pos, again.end) == (200, 500)
        assert plan.missing() == [(0, 200), (200, 500), (500, 1000)]
        plan.written(seg, 200)
        assert plan.prefix() == 200

    def test_reserve_stops_at_the_end_of_the_request(self):
        plan = SegmentPlan(100)
        seg = plan.claim()
        assert plan.reserve(seg, 10) == (0, 0)  # nothing asked for yet
        plan.request(seg, 30)
        assert plan.reserve(seg, 50) == (0, 30)

    def test_resumed_plan_counts_what_is_on_disk(self):
        plan = SegmentPlan(1000, [(100, 200), (900, 1000)])
        assert plan.fetched() == 800
        assert plan.missing() == [(100, 200), (900, 1000)]
        assert not plan.done()


# ======================================================================== core.digests
def file_digests_of(data: bytes, algorithms: set[str]) -> dict[str, str]:
    return {a: hashlib.new(a, data).hexdigest() for a in algorithms}


class TestDigests:
    def test_mismatch_names_the_first_digest_the_bytes_do_not_have(self):
        good, bad = Expected("md5", hashlib.md5(b"x").hexdigest()), Expected("sha256", "0" * 64, "SUMS")
        actual = file_digests_of(b"x", {"md5", "sha256"})
        assert mismatch([good], actual) is None
        assert mismatch([good, bad], actual) == bad
        assert mismatch([Expected("sha1", "0" * 40)], actual).algorithm == "sha1"  # a digest not computed is no match
        assert [spelled(a) for a in ("md5", "sha1", "sha256", "sha512")] == ["md5", "sha-1", "sha-256", "sha-512"]

    def test_user_digests_come_from_the_line_the_option_and_the_sums_file(self):
        line, option, listed = ("sha-256=" + "a" * 64, Expected("md5", "b" * 32, "--checksum"),
                                Expected("sha1", "c" * 40, "SUMS"))
        found = user_digests("sub/f.bin", line, option, {"f.bin": listed})
        assert found == [Expected("sha256", "a" * 64, "checksum= in the URL file"), option, listed]
        assert user_digests("sub/f.bin", None, None, {"sub/f.bin": listed}) == [listed]  # by path too
        assert user_digests("g.bin", None, None, {"f.bin": listed}) == []

    @pytest.mark.parametrize("name, algorithm", [
        ("md5", "md5"), ("sha-1", "sha1"), ("sha1", "sha1"), ("sha-224", "sha224"), ("sha224", "sha224"),
        ("sha-256", "sha256"), ("sha256", "sha256"), ("sha-384", "sha384"), ("sha384", "sha384"),
        ("sha-512", "sha512"), ("sha512", "sha512"), ("SHA-256", "sha256"),
    ])
    def test_parse_checksum_every_name(self, name, algorithm):
        hexdigest = hashlib.new(algorithm, b"x").hexdigest()
        expected = parse_checksum(f"{name}={hexdigest.upper()}")
        assert expected == Expected(algorithm, hexdigest, "--checksum")
        assert parse_checksum(f" {name} = {hexdigest} ", source="file").source == "file"

    @pytest.mark.parametrize("text", ["sha-256=abc", "md5=" + "a" * 64, "sha-256=" + "g" * 64, "crc32=1234abcd",
                                      "sha-256", "", "=" + "a" * 64, "blake2b=" + "a" * 128])
    def test_parse_checksum_rejects_with_the_text_named(self, text):
        with pytest.raises(ValueError) as info:
            parse_checksum(text)
        assert repr(text) in str(info.value)

    @staticmethod
    def b64(algorithm, data=b"body"):
        return base64.b64encode(hashlib.new(algorithm, data).digest()).decode()

    def test_repr_digest_is_kept_on_a_206_body_digests_are_not(self):
        headers = {"repr-digest": f"sha-256=:{self.b64('sha256')}:",
                   "content-digest": f"sha-256=:{self.b64('sha256', b'part')}:",
                   "content-md5": self.b64("md5", b"part")}
        assert server_digests(206, headers) == [Expected("sha256", hashlib.sha256(b"body").hexdigest(), "Repr-Digest")]

    def test_every_digest_is_kept_on_a_200(self):
        headers = {"repr-digest": f"sha-512=:{self.b64('sha512')}:",
                   "content-digest": f"sha-256=:{self.b64('sha256')}:",
                   "content-md5": self.b64("md5")}
        found = {(e.algorithm, e.source): e.hexdigest for e in server_digests(200, headers)}
        assert found == {("sha512", "Repr-Digest"): hashlib.sha512(b"body").hexdigest(),
                         ("sha256", "Content-Digest"): hashlib.sha256(b"body").hexdigest(),
                         ("md5", "Content-MD5"): hashlib.md5(b"body").hexdigest()}

    def test_several_items_and_parameters_in_one_header(self):
        value = f"md5=:{self.b64('md5')}:, sha-256=:{self.b64('sha256')}:;x=1, unixsum=:AA==:"
        assert [e.algorithm for e in server_digests(200, {"repr-digest": value})] == ["sha256"]

    @pytest.mark.parametrize("headers", [
        {"repr-digest": "sha-256=:!!notbase64!!:"},
        {"repr-digest": "sha-256=abc"},
        {"content-digest": "sha-256"},
        {"content-md5": "not base64 at all!"},
        {},
    ])
    def test_malformed_server_digests_are_ignored(self, headers):
        assert server_digests(200, headers) == []

    @pytest.mark.parametrize("headers", [
        {"content-md5": hashlib.md5(b"body").hexdigest()},
        {"repr-digest": "sha-256=:YWJj:"},
    ])
    def test_digests_of_the_wrong_length_are_ignored(self, headers):
        assert server_digests(200, headers) == []

    @pytest.mark.parametrize("line, name, algorithm", [
        (f"{hashlib.sha256(b'x').hexdigest()}  file.iso\n", "file.iso", "sha256"),
        (f"{hashlib.sha256(b'x').hexdigest()} *bin.iso\r\n", "bin.iso", "sha256"),
        (f"{hashlib.md5(b'x').hexdigest()}  two  spaces.txt", "two  spaces.txt", "md5"),
        (f"{hashlib.sha1(b'x').hexdigest().upper()}  up.txt", "up.txt", "sha1"),
        (f"{hashlib.sha512(b'x').hexdigest()}  big", "big", "sha512"),
        (f"SHA256 (a b.iso) = {hashlib.sha256(b'x').hexdigest()}", "a b.iso", "sha256"),
        (f"MD5 (x.txt) = {hashlib.md5(b'x').hexdigest()}", "x.txt", "md5"),
        (f"SHA512 (y) = {hashlib.sha512(b'x').hexdigest()}", "y", "sha512"),
    ])
    def test_parse_sums_line(self, line, name, algorithm):
        parsed = parse_sums_line(line)
        assert parsed is not None
        assert parsed[0] == name
        assert parsed[1].algorithm == algorithm
        assert parsed[1].hexdigest == hashlib.new(algorithm, b"x").hexdigest()

    @pytest.mark.parametrize("line", ["", "# comment", "abc  short.txt", "a" * 63 + "  odd.txt",
                                      "SHA1 (x) = " + "ab" * 32, "CRC (x) = 1234", "ab" * 32])
    def test_parse_sums_line_rejects_junk(self, line):
        assert parse_sums_line(line) is None


# ======================================================================== core.ratelimit
class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


class TestTokenBucket:
    def test_burst_then_wait(self):
        clock = FakeClock()
        bucket = TokenBucket(rate=1000, burst=1000, clock=clock)
        assert bucket.take(1000) == 0.0
        assert bucket.take(500) == pytest.approx(0.5)

    @pytest.mark.parametrize("chunk", [100, 4096, 50_000])
    def test_long_run_rate_is_respected(self, chunk):
        clock = FakeClock()
        rate, burst = 10_000.0, 2_000.0
        bucket = TokenBucket(rate=rate, burst=burst, clock=clock)
        sent = 0
        while clock.now < 100:
            clock.now += bucket.take(chunk)  # the caller waits as told, then sends
            sent += chunk
        assert sent <= burst + rate * clock.now + chunk
        assert sent >= rate * clock.now * 0.95

    def test_idle_time_does_not_bank_more_than_the_burst(self):
        clock = FakeClock()
        bucket = TokenBucket(rate=100, burst=50, clock=clock)
        clock.now = 3600
        assert bucket.take(50) == 0.0
        assert bucket.take(100) == pytest.approx(1.0)

    def test_shared_between_threads_books_every_byte(self):
        clock = FakeClock()
        bucket = TokenBucket(rate=1000, burst=0, clock=clock)
        threads = [threading.Thread(target=lambda: [bucket.take(1) for _ in range(1000)]) for _ in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert bucket.take(0) == pytest.approx(4.0)


# ======================================================================== core.results, core.schedule
class TestResults:
    def test_counts_totals_and_summary(self):
        results = Results()
        results.add(Result("https://h/a", OK, bytes=2048))
        results.add(Result("https://h/b", SKIPPED))
        results.add(Result("https://h/c", FAILED, error="HTTP 404"))
        assert results.counts == {OK: 1, SKIPPED: 1, FAILED: 1, "interrupted": 0}
        assert len(results) == 3 and results.total_bytes == 2048
        assert [r.url for r in results.failed] == ["https://h/c"]
        assert not results.success
        assert results.summary().startswith("1 downloaded, 1 already there, 1 failed; 2.0 KiB")

    def test_keep_false_keeps_only_failures(self):
        results = Results(keep=False)
        for i in range(5):
            results.add(Result(f"https://h/{i}", OK, bytes=1))
        results.add(Result("https://h/x", FAILED))
        assert results.items == [] and len(results) == 6 and len(results.failed) == 1

    def test_a_rejected_line_is_not_a_success(self):
        results = Results()
        results.add(Result("https://h/a", OK))
        assert results.success
        results.reject(Rejected(3, "junk", "not a URL"))
        assert not results.success and "1 input line(s) rejected" in results.summary()

    def test_to_json_drops_empty_post(self):
        assert "post" not in Result("u", OK).to_json()
        assert Result("u", OK, post=[{"task": "x"}]).to_json()["post"] == [{"task": "x"}]


class TestScheduler:
    @staticmethod
    def started_feed(jobs):
        done = threading.Event()
        calls = itertools.count(1)
        feed = Feed([[job] for job in jobs], on_item=lambda: next(calls) > len(jobs) and done.set())
        feed.start()
        assert done.wait(5)
        return feed

    def test_per_host_cap_defers_and_resumes(self):
        jobs = [Job("https://a/1"), Job("https://a/2"), Job("https://b/1")]
        sched = Scheduler(self.started_feed(jobs), per_host=1, connections=4)
        first, second = sched.poll(), sched.poll()
        assert isinstance(first, Start) and first.job.url == "https://a/1"
        assert isinstance(second, Start) and second.job.url == "https://b/1"
        assert sched.poll() is WAIT
        sched.connection_done("a")
        sched.job_done()
        third = sched.poll()
        assert isinstance(third, Start) and third.job.url == "https://a/2"
        assert sched.poll() is WAIT
        for host in ("a", "b"):
            sched.connection_done(host)
            sched.job_done()
        assert sched.poll() is None

    def test_stop_ends_polling(self):
        sched = Scheduler(self.started_feed([Job("https://a/1")]), per_host=None, connections=1)
        sched.stop()
        assert sched.poll() is None

    def test_the_tail_shares_what_is_left_among_all_connections(self):
        class Open:  # a file in flight, as the scheduler sees it
            host = "a"

            def __init__(self, left):
                self.left = left

            def unrequested(self):
                return self.left

            def max_connections(self):
                return 3

            def can_help(self):
                return False

        sched = Scheduler(self.started_feed([Job("https://a/1"), Job("https://a/2")]), per_host=None,
                          connections=4)
        assert isinstance(sched.poll(), Start)
        sched.open_for_help(Open(1000))
        sched.open_for_help(Open(3001))
        assert not sched.in_tail and sched.tail_share() is None  # a file is still to start
        assert isinstance(sched.poll(), Start)
        assert sched.poll() is WAIT  # that poll saw the end of the input
        assert sched.in_tail
        sched.sized()
        assert sched.tail_share() is None  # a started file's size is still unknown
        sched.sized()
        assert sched.tail_share() == 1001  # 4001 bytes nobody asked for, over 4 connections
        sched.close_for_help(sched._open[0])
        assert sched.tail_share() == 1001  # 3001 bytes, over the 3 connections that file may use


class TestProxies:
    def test_scheme_variables_then_all_proxy_lower_case_first(self):
        from downloader.core.proxies import Proxies
        proxies = Proxies({"HTTP_PROXY": "http://upper:1", "http_proxy": "lower:2", "ALL_PROXY": "http://all:3"})
        assert proxies.for_url("http://a.example/x") == "http://lower:2"  # host:port means http://
        assert proxies.for_url("https://a.example/x") == "http://all:3"
        assert Proxies({}).for_url("http://a.example/x") is None

    def test_cgi_ignores_the_http_proxy_header_variable(self):
        from downloader.core.proxies import Proxies
        assert Proxies({"HTTP_PROXY": "http://evil:1", "REQUEST_METHOD": "GET"}).for_url("http://a/") is None

    @pytest.mark.parametrize("url, direct", [
        ("http://localhost/x", True), ("http://intra.example/x", True), ("http://a.intra.example/x", True),
        ("http://notintra.example/x", False), ("http://10.2.3.4/x", True), ("http://11.2.3.4/x", False),
        ("http://h.example:81/x", True), ("http://h.example:82/x", False), ("http://[::1]/x", True),
    ])
    def test_no_proxy_names_suffixes_ports_and_networks(self, url, direct):
        from downloader.core.proxies import Proxies
        proxies = Proxies({"http_proxy": "http://p:3128",
                           "no_proxy": "localhost, .intra.example,10.0.0.0/8,h.example:81,::1"})
        assert (proxies.for_url(url) is None) == direct

    def test_no_proxy_star_bypasses_everything(self):
        from downloader.core.proxies import Proxies
        assert Proxies({"http_proxy": "http://p:1", "NO_PROXY": "*"}).for_url("http://a/") is None

    @pytest.mark.parametrize("url, direct", [
        ("http://[::1]:8080/x", True), ("http://[::1]/x", False), ("https://secure.example/x", True),
        ("http://secure.example/x", False), ("http://0.1.2.3/x", False), ("http://dot.example./x", True),
    ])
    def test_no_proxy_brackets_default_ports_whole_addresses_and_trailing_dots(self, url, direct):
        from downloader.core.proxies import Proxies
        proxies = Proxies({"http_proxy": "http://p:1", "https_proxy": "http://p:1",
                           "no_proxy": "[::1]:8080,secure.example:443,0.1,dot.example."})
        assert (proxies.for_url(url) is None) == direct

    def test_an_empty_lower_case_variable_unsets_the_upper_case_one(self):
        from downloader.core.proxies import Proxies
        assert Proxies({"HTTP_PROXY": "http://p:1", "http_proxy": ""}).for_url("http://a/") is None

    @pytest.mark.parametrize("value, needle", [
        ("http://u:SECRET@127.0.0.1:99999", "not a proxy URL (Port out of range"),
        ("http://u:SECRET@[::1", "not a proxy URL (Invalid IPv6 URL)"),
        ("http://u:SECRET@:3128", "not a proxy URL (no host or port)"),
    ])
    def test_a_broken_proxy_url_is_one_line_without_the_password(self, value, needle):
        from downloader.core.proxies import Proxies
        problem = Proxies({"http_proxy": value}).problem()
        assert needle in problem and "SECRET" not in problem

    def test_only_http_proxies_are_accepted_and_the_message_hides_the_password(self):
        from downloader.core.proxies import Proxies
        assert Proxies({"https_proxy": "http://p:1"}).problem() is None
        problem = Proxies({"all_proxy": "socks5://user:pw@s:1080"}).problem()
        assert problem.startswith("all_proxy='socks5://user:***@s:1080': only http:// proxies")


# ======================================================================== config
class TestConfig:
    @pytest.mark.parametrize("value, size", [
        (4096, 4096), ("4096", 4096), ("500K", 512_000), ("500k", 512_000), ("2M", 2 * 1024 ** 2),
        ("1.5G", int(1.5 * 1024 ** 3)), ("1KB", 1000), ("3MB", 3_000_000), ("1GiB", 1024 ** 3),
        (" 8 M ", 8 * 1024 ** 2), ("10B", 10), (".5K", 512), (0, 0),
    ])
    def test_parse_size(self, value, size):
        assert parse_size(value) == size

    @pytest.mark.parametrize("value", ["", "abc", "5X", "-1", "1,5M", "M", -1, "1 2"])
    def test_parse_size_rejects(self, value):
        with pytest.raises(UsageError, match="--thing"):
            parse_size(value, "--thing")

    @pytest.mark.parametrize("value, seconds", [
        (30, 30.0), ("30", 30.0), ("30s", 30.0), ("50ms", 0.05), ("1.5m", 90.0), ("2min", 120.0), ("2h", 7200.0),
        (0.25, 0.25),
    ])
    def test_parse_duration(self, value, seconds):
        assert parse_duration(value) == pytest.approx(seconds)

    @pytest.mark.parametrize("value", ["soon", "5d", "-3s", -1, "", "1..2s"])
    def test_parse_duration_rejects(self, value):
        with pytest.raises(UsageError, match="--timeout"):
            parse_duration(value, "--timeout")

    @pytest.mark.parametrize("value, rate", [
        (None, None), ("", None), (0, None), ("0", None), ("0K", None), ("0/s", None), (0.0, None),
        ("2M", 2 * 1024 ** 2), ("1M/s", 1024 ** 2),
        ("500K/S", 512_000), (1000, 1000),
    ])
    def test_parse_rate(self, value, rate):
        assert parse_rate(value) == rate

    def test_parse_rate_rejects_naming_the_option(self):
        with pytest.raises(UsageError, match="--max-speed"):
            parse_rate("fast")

    @pytest.mark.parametrize("text, parsed", [
        ("Authorization: Bearer x", ("Authorization", "Bearer x")),
        ("X-Empty:", ("X-Empty", "")),
        ("  X-Pad :  v:w  ", ("X-Pad", "v:w")),
    ])
    def test_parse_header(self, text, parsed):
        assert parse_header(text) == parsed

    @pytest.mark.parametrize("text", ["NoColon", ": value", "Bad Name: v", "X: a\r\nInjected: 1", "X: a\nb"])
    def test_parse_header_rejects(self, text):
        with pytest.raises(UsageError, match="header"):
            parse_header(text)

    def test_build_turns_loose_input_into_full_types(self, tmp_path):
        opts = Options.build(str(tmp_path), mode="thread", timeout="500ms", min_segment_size="1M",
                             max_speed="2M/s", chunk_size="64K", headers=["X-A: 1", ("X-B", 2)])
        assert opts.dest == tmp_path and opts.timeout == 0.5 and opts.min_segment_size == 1024 ** 2
        assert opts.max_speed == 2 * 1024 ** 2 and opts.chunk_size == 65536
        assert opts.headers == (("X-A", "1"), ("X-B", "2"))
        with pytest.raises(AttributeError):
            opts.jobs = 3  # frozen

    def test_sequential_mode_uses_one_connection(self):
        assert Options.build(mode="sequential", jobs=8).jobs == 1

    @pytest.mark.parametrize("kwargs, option", [
        ({"mode": "fast"}, "--mode"),
        ({"jobs": 0}, "--jobs"),
        ({"jobs": "4"}, "--jobs"),
        ({"jobs": True}, "--jobs"),
        ({"retries": -1}, "--retries"),
        ({"segments": 0}, "--segments"),
        ({"per_host": 0}, "--per-host"),
        ({"post_executor": "gpu"}, "--post-executor"),
        ({"post_workers": 0}, "--post-workers"),
        ({"timeout": 0}, "--timeout"),
        ({"timeout": "later"}, "--timeout"),
        ({"min_segment_size": "huge"}, "--min-segment-size"),
        ({"max_speed": "fast"}, "--max-speed"),
        ({"chunk_size": "10"}, "chunk size"),
        ({"headers": ["NoColon"]}, "header"),
    ])
    def test_build_rejects_bad_values_naming_the_option(self, kwargs, option):
        with pytest.raises(UsageError) as info:
            Options.build(".", **kwargs)
        assert option in str(info.value)

    def test_build_rejects_a_non_numeric_post_workers(self):
        with pytest.raises(UsageError, match="--post-workers"):
            Options.build(".", post_workers="two")

    def test_build_applies_retry_and_redirect_options(self):
        opts = Options.build(".", retry_base=0.01, retry_cap=2.0, max_redirects=3)
        assert (opts.retry_base, opts.retry_cap, opts.max_redirects) == (0.01, 2.0, 3)


# ======================================================================== architecture
def imports_of(path: Path) -> list[tuple[int, str]]:
    """(level, module) for every import in a file, including those inside functions."""
    found = []
    for node in ast.walk(ast.parse(path.read_text("utf-8"), str(path))):
        if isinstance(node, ast.Import):
            found += [(0, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level == 1 and not node.module:
                found += [(1, alias.name) for alias in node.names]
            else:
                found.append((node.level, node.module or ""))
    return found


def package_modules() -> list[Path]:
    return sorted(p for p in PACKAGE.rglob("*.py") if ".venv" not in p.parts)


CORE_MODULES = sorted(CORE.glob("*.py"))
_CORE_XFAIL = {
}


@pytest.mark.parametrize("path", [pytest.param(p, id=p.name, marks=_CORE_XFAIL.get(p.name, ())) for p in CORE_MODULES])
def test_core_modules_import_only_the_standard_library_and_core(path):
    core_names = {p.stem for p in CORE_MODULES}
    for level, module in imports_of(path):
        if level == 0:
            assert module.split(".")[0] in sys.stdlib_module_names, f"{path.name} imports {module}"
        else:
            assert level == 1 and module.split(".")[0] in core_names | {""}, \
                f"{path.name} imports {'.' * level}{module}"


def test_core_reaches_no_third_party_module_even_through_the_package():
    """Whatever core imports from the rest of the package must itself be standard-library only."""
    for path in CORE_MODULES:
        for level, module in imports_of(path):
            if level == 2:
                target = PACKAGE / (module.replace(".", "/") + ".py")
                assert target.exists(), f"{path.name} imports ..{module}"
                for lvl, mod in imports_of(target):
                    assert lvl > 0 or mod.split(".")[0] in sys.stdlib_module_names, f"..{module} imports {mod}"


DEPENDENCY_HOMES = {
    "requests": {"engines/sync.py"},
    "urllib3": {"engines/sync.py"},
    "aiohttp": {"engines/aio.py", "mockserver.py"},
    "tqdm": {"progress.py"},
    "matplotlib": {"benchcmd.py"},
    "trustme": {"mockserver.py"},
    "typer": {"cli.py"},
    "click": {"cli.py"},
    "dask": {"cluster.py"},
    "distributed": {"cluster.py"},
    "pycurl": {"engines/curl.py", "cli.py"},  # cli.py: only for libcurl's version in --version
    "async_timeout": {"engines/aio.py"},  # on Python 3.10 only, where asyncio has no timeout()
}


def test_each_third_party_dependency_has_one_home():
    users: dict[str, set[str]] = {}
    for path in package_modules():
        rel = path.relative_to(PACKAGE).as_posix()
        for level, module in imports_of(path):
            if level == 0:
                users.setdefault(module.split(".")[0], set()).add(rel)
    for dependency, homes in DEPENDENCY_HOMES.items():
        assert users.get(dependency, set()) <= homes, f"{dependency} imported by {users[dependency] - homes}"
    for dependency in ("requests", "aiohttp", "tqdm", "typer"):
        assert users.get(dependency), f"nobody imports {dependency}: the test above would prove nothing"
    strangers = {m for m in users if m not in sys.stdlib_module_names and m not in DEPENDENCY_HOMES
                 and m != "downloader"}
    assert not strangers, f"undeclared third-party imports: {strangers}"


def test_importing_the_package_loads_no_heavy_module():
    code = ("import sys, downloader; "
            "print(sorted(m for m in ('requests', 'aiohttp', 'tqdm', 'typer', 'dask') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True)
    assert out.stdout.strip() == "[]"


# ======================================================================== sink
URL = "https://h/file.bin"


@pytest.fixture
def part(tmp_path):
    p = PartFile(tmp_path / "file.bin")
    yield p
    p.close()


class TestPartFile:
    def test_names_beside_the_final_file(self, part, tmp_path):
        assert part.part == str(tmp_path / "file.bin.part")
        assert part.state == str(tmp_path / "file.bin.part.state")

    def test_stream_resume_point_is_the_part_size_even_when_the_state_says_less(self, part):
        part.open(fresh=True)
        part.write(0, b"x" * 100)
        part.save_state(URL, 1000, V, "stream", [(40, 1000)])
        saved = part.saved(URL)
        assert saved.layout == "stream" and saved.size == 1000 and saved.validator == V
        assert saved.have == 100 and saved.missing == [(100, 1000)]

    def test_stream_of_unknown_size(self, part):
        part.open(fresh=True)
        part.write(0, b"abc")
        part.save_state(URL, None, V, "stream", [(3, None)])
        saved = part.saved(URL)
        assert saved.have == 3 and saved.size is None

    def test_segments_round_trip(self, part):
        part.open(fresh=True)
        part.write(0, b"a" * 100)
        part.write(500, b"b" * 100)
        part.save_state(URL, 1000, V, "segments", [(100, 500), (600, 1000)])
        saved = part.saved(URL)
        assert saved.layout == "segments" and saved.missing == [(100, 500), (600, 1000)]
        assert saved.have == 200 and saved.validator == V
        assert json.loads(Path(part.state).read_text())["url"] == URL

    def test_state_keeps_a_password_masked_and_still_matches(self, part, tmp_path):
        index = Index(tmp_path)
        secret, other = "https://u:pw-9@h/file.bin", "https://u:other@h/file.bin"
        key = index.key(secret)
        assert "pw-9" not in key and key.startswith("https://u:***@h/file.bin #")
        assert index.key(other) != key and index.key(URL) == URL
        part.open(fresh=True)
        part.write(0, b"x" * 10)
        part.save_state(key, 100, V, "stream", [(10, 100)])
        assert "pw-9" not in Path(part.state).read_text()
        assert part.saved(key, secret).have == 10
        assert part.saved(index.key(other), other) is None  # another password: another file
        state = json.loads(Path(part.state).read_text())
        state["url"] = secret  # a state file from before URLs were masked is still this URL's
        Path(part.state).write_text(json.dumps(state))
        assert part.saved(key, secret).have == 10
        index.close()

    def test_save_state_can_be_throttled(self, part):
        part.save_state(URL, 10, V, "stream", [(0, 10)])
        part.save_state("https://other/", 10, V, "stream", [(0, 10)], force=False)
        assert json.loads(Path(part.state).read_text())["url"] == URL

    def test_nothing_usable_for_another_url(self, part):
        part.open(fresh=True)
        part.write(0, b"x")
        part.save_state(URL, 10, V, "stream", [(1, 10)])
        assert part.saved("https://h/other.bin") is None

    @pytest.mark.parametrize("state", ["{not json", "", '{"version": 99, "url": "%s"}' % URL,
                                       '{"version": 1, "url": "%s", "layout": "weird", "size": 10}' % URL,
                                       '{"version": 1, "url": "%s", "layout": "segments", "size": 10}' % URL,
                                       '{"version": 1, "url": "%s", "layout": "segments", "size": 10, '
                                       '"missing": [["a", "b"]]}' % URL])
    def test_nothing_usable_from_a_damaged_state(self, part, state):
        Path(part.part).write_bytes(b"x")
        Path(part.state).write_text(state)
        assert part.saved(URL) is None

    @pytest.mark.parametrize("state", ["[]", "null", "42", '"text"'])
    def test_nothing_usable_from_a_state_that_is_not_an_object(self, part, state):
        Path(part.part).write_bytes(b"x")
        Path(part.state).write_text(state)
        assert part.saved(URL) is None

    def test_nothing_usable_without_the_part(self, part):
        part.save_state(URL, 10, V, "stream", [(0, 10)])
        assert part.saved(URL) is None

    def test_nothing_usable_when_the_part_is_longer_than_the_file(self, part):
        part.open(fresh=True)
        part.write(0, b"x" * 20)
        part.save_state(URL, 10, V, "stream", [(10, 10)])
        assert part.saved(URL) is None

    @pytest.mark.parametrize("missing", [[(100, 500), (600, 2000)], [(100, 500), (400, 1000)]])
    def test_nothing_usable_from_impossible_missing_ranges(self, part, missing):
        part.open(fresh=True)
        part.write(0, b"x" * 100)
        part.save_state(URL, 1000, V, "segments", missing)
        assert part.saved(URL) is None

    def test_open_fresh_empties_and_resume_keeps(self, part):
        part.open(fresh=True)
        part.write(0, b"hello")
        part.close()
        part.open(fresh=False)
        part.write(5, b" world")
        part.close()
        assert Path(part.part).read_bytes() == b"hello world"
        part.open(fresh=True)
        assert part.size_on_disk() == 0

    def test_write_at_offsets_leaves_holes_as_zeros(self, part):
        part.open(fresh=True)
        part.write(4, b"tail")
        part.write(0, b"he")
        part.close()
        assert Path(part.part).read_bytes() == b"he\x00\x00tail"

    def test_commit_renames_and_removes_the_state(self, part):
        part.open(fresh=True)
        part.write(0, b"complete")
        part.save_state(URL, 8, V, "stream", [(8, 8)])
        part.commit()
        assert Path(part.final).read_bytes() == b"complete"
        assert not Path(part.part).exists() and not Path(part.state).exists()

    def test_discard_removes_part_and_state(self, part):
        part.open(fresh=True)
        part.write(0, b"bad")
        part.save_state(URL, 3, V, "stream", [(3, 3)])
        part.discard()
        assert not Path(part.part).exists() and not Path(part.state).exists() and not Path(part.final).exists()

    def test_full_disk_is_a_disk_error_saying_so(self, part, monkeypatch):
        def full(fd, data, offset):
            raise OSError(errno.ENOSPC, "No space left on device")
        part.open(fresh=True)
        part.write(0, b"kept")
        monkeypatch.setattr(os, "pwrite", full)
        with pytest.raises(DiskError) as info:
            part.write(4, b"more")
        assert info.value.disk_full is True and info.value.retryable is False
        assert "disk full" in str(info.value) and "file.bin.part" in str(info.value)
        monkeypatch.undo()
        part.close()
        assert Path(part.part).read_bytes() == b"kept"

    def test_a_zero_length_write_is_a_full_disk(self, part, monkeypatch):
        part.open(fresh=True)
        monkeypatch.setattr(os, "pwrite", lambda fd, data, offset: 0)
        with pytest.raises(DiskError) as info:
            part.write(0, b"x")
        assert info.value.disk_full

    def test_other_write_errors_are_not_disk_full(self, part, monkeypatch):
        def denied(fd, data, offset):
            raise OSError(errno.EACCES, "Permission denied")
        part.open(fresh=True)
        monkeypatch.setattr(os, "pwrite", denied)
        with pytest.raises(DiskError) as info:
            part.write(0, b"x")
        assert info.value.disk_full is False and "Permission denied" in str(info.value)

    def test_short_writes_are_continued(self, part, monkeypatch):
        real = os.pwrite
        monkeypatch.setattr(os, "pwrite", lambda fd, data, offset: real(fd, bytes(data[:3]), offset))
        part.open(fresh=True)
        part.write(2, b"0123456789")
        monkeypatch.undo()
        part.close()
        assert Path(part.part).read_bytes() == b"\x00\x000123456789"


class TestStreamHasher:
    @pytest.mark.parametrize("size", [0, 3, StreamHasher.THREAD_AFTER - 1, StreamHasher.THREAD_AFTER + 70_001])
    def test_digests_equal_hashlib(self, size):
        data = random.Random(size).randbytes(size)
        hasher = StreamHasher({"sha256", "md5"})
        for i in range(0, size, 65_536):
            hasher.update(data[i:i + 65_536])
        if size == 0:
            hasher.update(b"")
        assert hasher.hexdigests() == {"sha256": hashlib.sha256(data).hexdigest(),
                                       "md5": hashlib.md5(data).hexdigest()}
        assert hasher.fed == size

    def test_abandon_stops_the_helper_thread(self):
        def hashers():
            return [t for t in threading.enumerate() if t.name == "hasher"]

        hasher = StreamHasher({"sha256"})
        hasher.update(b"x" * (StreamHasher.THREAD_AFTER + 1))
        assert len(hashers()) == 1
        hasher.abandon()
        assert hashers() == []

    def test_prefix_hasher_follows_the_bytes_on_disk(self, tmp_path):
        from downloader.sink import PrefixHasher
        data = random.Random(7).randbytes(3_000_000)
        path = tmp_path / "f.part"
        path.write_bytes(bytes(len(data)))
        hasher = PrefixHasher(path, {"sha256"}, block=100_000)
        with open(path, "r+b") as fh:  # pieces land out of order; the prefix says what is final
            for start, end, prefix in ((1_000_000, 2_000_000, 0), (0, 1_000_000, 2_000_000),
                                       (2_000_000, 3_000_000, 3_000_000)):
                fh.seek(start)
                fh.write(data[start:end])
                fh.flush()
                hasher.advance(prefix)
        assert hasher.finish(len(data)) == {"sha256": hashlib.sha256(data).hexdigest()}
        assert not [t for t in threading.enumerate() if t.name == "prefix-hasher"]

    def test_prefix_hasher_gives_up_quietly_on_a_short_file(self, tmp_path):
        from downloader.sink import PrefixHasher
        path = tmp_path / "f.part"
        path.write_bytes(b"abc")
        hasher = PrefixHasher(path, {"md5"})
        assert hasher.finish(10) is None  # the caller reads the file itself then
        PrefixHasher(path, {"md5"}).abandon()
        assert not [t for t in threading.enumerate() if t.name == "prefix-hasher"]

    def test_prefix_hasher_stops_at_once_when_abandoned(self, tmp_path):
        from downloader.sink import PrefixHasher
        path = tmp_path / "big.part"
        with open(path, "wb") as fh:
            fh.truncate(4 << 30)  # sparse: 4 GiB that would take seconds to hash
        hasher = PrefixHasher(path, {"sha256"}, block=1 << 20)
        hasher.advance(4 << 30)
        hasher.abandon()  # a failed or restarted download: the result is not wanted
        assert hasher.hasher.fed < 4 << 30
        assert not [t for t in threading.enumerate() if t.name == "prefix-hasher"]

    def test_file_digests_can_prime_a_hasher_with_a_prefix(self, tmp_path):
        path = tmp_path / "f"
        path.write_bytes(b"hello world")
        hasher = StreamHasher({"sha256"})
        assert file_digests(path, {"sha256"}, hasher=hasher, end=5, finish=False) is None
        hasher.update(b" there")
        assert hasher.hexdigests()["sha256"] == hashlib.sha256(b"hello there").hexdigest()
        assert file_digests(path, {"sha256"}, block=4) == {"sha256": hashlib.sha256(b"hello world").hexdigest()}


# ======================================================================== index
class TestIndex:
    def test_an_old_index_with_passwords_is_masked_when_opened(self, tmp_path):
        import sqlite3
        Index(tmp_path).close()
        db_path = tmp_path / ".downloader/index.sqlite"
        db = sqlite3.connect(db_path)
        with db:
            db.execute("INSERT INTO files (url, name, complete) VALUES ('http://u:pw-old-77@h/f', 'f', 1)")
        db.close()
        index = Index(tmp_path)
        assert index.lookup("http://u:pw-old-77@h/f") == Entry("f", True, None, None)
        index.close()
        for path in db_path.parent.iterdir():
            assert b"pw-old-77" not in path.read_bytes(), path

    def test_the_same_url_gets_the_same_name_back(self, tmp_path):
        index = Index(tmp_path)
        assert index.claim("https://h/a", "file.iso") == "file.iso"
        assert index.claim("https://h/a", "file.iso") == "file.iso"
        assert index.owner("file.iso") == "https://h/a"
        index.close()
        assert (tmp_path / STATE_DIR / "index.sqlite").is_file()

    def test_a_second_url_gets_a_deterministic_other_name(self, tmp_path):
        index = Index(tmp_path)
        index.claim("https://h/a", "file.iso")
        second = index.claim("https://mirror/a", "file.iso")
        assert second == disambiguate("file.iso", "https://mirror/a")
        third = index.claim("https://other/a", "file.iso")
        assert len({"file.iso", second, third}) == 3
        index.close()

    @pytest.mark.parametrize("name", ["a.b/file", "a.b/file.iso", "x/y.z/archive.tar.gz"])
    def test_disambiguating_keeps_the_folder(self, tmp_path, name):
        index = Index(tmp_path)
        index.claim("https://h/1", name)
        other = index.claim("https://h/2", name)
        folder, _, base = name.rpartition("/")
        assert other.rpartition("/")[0] == folder
        assert other == f"{folder}/{disambiguate(base, 'https://h/2')}"
        index.close()

    def test_a_url_that_wants_another_name_gives_the_old_one_up(self, tmp_path):
        index = Index(tmp_path)
        index.claim("https://h/a", "a")
        assert index.claim("https://h/a", "report.pdf") == "report.pdf"
        assert index.owner("a") is None
        assert index.claim("https://h/b", "a") == "a"
        index.close()

    def test_claims_and_completion_persist_across_reopen(self, tmp_path):
        index = Index(tmp_path)
        index.claim("https://h/a", "file.iso")
        second = index.claim("https://h/b", "file.iso")
        index.complete("https://h/a", 42, SHA256_EMPTY)
        index.close()
        again = Index(tmp_path)
        assert again.claim("https://h/b", "file.iso") == second
        assert again.claim("https://h/a", "file.iso") == "file.iso"
        entry = again.lookup("https://h/a")
        assert (entry.name, entry.complete, entry.size, entry.sha256) == ("file.iso", True, 42, SHA256_EMPTY)
        assert again.lookup("https://h/none") is None
        again.close()

    def test_an_unusable_folder_is_a_disk_error(self, tmp_path):
        blocker = tmp_path / "file"
        blocker.write_text("not a folder")
        with pytest.raises(DiskError, match="index"):
            Index(blocker)


def test_per_host_cap_counts_connections_in_the_scheduler():
    from downloader.core.schedule import WAIT, Feed, Scheduler, Start
    from downloader.core.sources import Job
    jobs = [Job(f"http://a.example/{i}") for i in range(3)] + [Job("http://b.example/x")]
    feed = Feed(iter([jobs]))
    feed._run()  # fill the queue synchronously
    scheduler = Scheduler(feed, per_host=1, connections=8)
    first, second = scheduler.poll(), scheduler.poll()
    assert isinstance(first, Start) and first.host == "a.example"
    assert isinstance(second, Start) and second.host == "b.example"
    assert scheduler.poll() is WAIT  # a.example is at its cap; its other jobs wait, deferred
    scheduler.connection_done("a.example")
    scheduler.job_done()
    third = scheduler.poll()
    assert isinstance(third, Start) and third.job.url == "http://a.example/1"


def test_results_without_keep_hold_a_bounded_number_of_failures_and_rejections():
    from downloader.core.results import KEEP_AT_MOST
    results = Results(keep=False)
    for i in range(KEEP_AT_MOST + 50):
        results.add(Result(f"https://h/{i}", FAILED, error="x"))
        results.reject(Rejected(i, "junk", "not a URL"))
    assert len(results.failures) == len(results.rejected) == KEEP_AT_MOST
    assert results.counts[FAILED] == results.rejected_count == KEEP_AT_MOST + 50
    assert f"{KEEP_AT_MOST + 50} failed, {KEEP_AT_MOST + 50} input line(s) rejected" in results.summary()


@given(st.one_of(st.text(alphabet="bytes 0123456789-/*\t,abc", max_size=30),
                 st.builds(lambda a, b, t: f"bytes {a}-{b}/{t}", st.integers(0, 10**6), st.integers(0, 10**6),
                           st.one_of(st.integers(0, 10**6).map(str), st.just("*")))))
def test_content_range_parsing_agrees_with_the_rfc_grammar(value):
    """The fast path for "bytes A-B/T" gives what the regular expression gives, for any text."""
    import re
    from downloader.core.ranges import parse_content_range
    match = re.match(r"^\s*bytes\s+(\d+)-(\d+)/(\d+|\*)\s*$", value, re.I)
    expected = None
    if match:
        first, last = int(match.group(1)), int(match.group(2))
        total = None if match.group(3) == "*" else int(match.group(3))
        expected = None if last < first or (total is not None and last >= total) else (first, last, total)
    assert parse_content_range(value) == expected
