"""Finding inputs and reading images."""

from __future__ import annotations

import glob
import os
from pathlib import Path

import cv2
import numpy as np
import pytest

from toolkit.errors import InputError
from toolkit.io.decode import read_image
from toolkit.io.files import ImageReadError
from toolkit.io.sources import InputRef, list_sources


def _jpg(path: Path, h: int = 40, w: int = 60) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    img = np.random.default_rng(0).integers(0, 255, (h, w, 3), dtype=np.uint8)
    assert cv2.imwrite(str(path), img)
    return path


def test_folder_is_recursive_sorted_and_keys_keep_relative_paths(tmp_path: Path) -> None:
    _jpg(tmp_path / "b.jpg")
    _jpg(tmp_path / "a" / "x.jpg")
    _jpg(tmp_path / "c" / "x.jpg")  # same name in another folder: a distinct key
    (tmp_path / "readme.md").write_text("not an input")
    s = list_sources(tmp_path)
    assert [r.key for r in s.items] == [os.path.join("a", "x"), "b", os.path.join("c", "x")]
    assert not s.failed



def test_a_folder_linked_inside_the_source_is_walked_once(tmp_path: Path) -> None:
    """A symbolic link to a folder inside SOURCE is followed (its images were skipped without a word); a link
    back up to an ancestor, or a second link to a folder walked already, adds nothing twice and does not loop."""
    _jpg(tmp_path / "elsewhere" / "far.jpg")
    src = tmp_path / "src"
    _jpg(src / "near.jpg")
    (src / "linked").symlink_to(tmp_path / "elsewhere", target_is_directory=True)
    (src / "again").symlink_to(tmp_path / "elsewhere", target_is_directory=True)
    (src / "loop").symlink_to(src, target_is_directory=True)
    s = list_sources(src)
    assert [r.key for r in s.items] == [os.path.join("again", "far"), "near"]
    assert not s.failed


def test_a_file_url_is_the_local_path_it_names(tmp_path: Path) -> None:
    """As docs/guide/object-storage.md says: SOURCE, a list's line and --project as file:// URLs are local paths
    (they were "no such file", "not a URL yolokit reads", and a folder named file: under the working one)."""
    from toolkit.cli import main

    a = _jpg(tmp_path / "my photos" / "a.jpg")
    url = "file://" + str(a).replace(" ", "%20")
    assert [r.path for r in list_sources(url).items] == [str(a)]
    lst = tmp_path / "list.txt"
    lst.write_text(f"{url}\nfile://localhost{a.parent.as_posix().replace(' ', '%20')}/a.jpg\n")
    got = list_sources(lst)
    assert [r.path for r in got.items] == [str(a), str(a)] and not got.failed
    out = tmp_path / "out"
    assert main(["run", url, "--weights", "yolov5n.yaml", "--imgsz", "64", "--nosave", "--project",
                 f"file://{out}", "--name", "r"]) == 0
    assert (out / "r" / "summary.json").is_file()


def test_what_a_list_cannot_hold_says_what_it_is(tmp_path: Path) -> None:
    """A folder or another list named in a list, a zero-byte video: each failure says what it is (they read "not an
    image or video file type (no suffix)" and "cannot open the video (corrupt...)"); a store URL with no bucket is
    refused in one line."""
    from toolkit.io.sources import iter_video

    (tmp_path / "sub").mkdir()
    (tmp_path / "other.txt").write_text("")
    (tmp_path / "empty.mp4").write_bytes(b"")
    lst = tmp_path / "list.txt"
    lst.write_text("sub\nother.txt\n")
    reasons = {Path(r.path).name: why for r, why in list_sources(lst).failed}
    assert reasons["sub"].startswith("a folder, named in a list")
    assert reasons["other.txt"].startswith("a list named in a list is not read")
    got = list(iter_video(InputRef(str(tmp_path / "empty.mp4"), "empty", -1)))
    assert [why for _, _, why in got] == ["empty file (0 bytes)"]
    with pytest.raises(InputError, match="names no bucket"):
        list_sources("s3://")

def test_glob_list_file_and_missing(tmp_path: Path) -> None:
    a = _jpg(tmp_path / "imgs" / "a.jpg")
    _jpg(tmp_path / "imgs" / "b.png")
    assert len(list_sources(str(tmp_path / "imgs" / "*.jpg"))) == 1
    lst = tmp_path / "list.txt"
    lst.write_text(f"{a}\nimgs/b.png\n\n# comment\n")
    assert [Path(r.path).name for r in list_sources(lst).items] == ["a.jpg", "b.png"]
    with pytest.raises(InputError, match="no such file or folder"):
        list_sources(tmp_path / "nope")
    with pytest.raises(InputError, match="matches no files"):
        list_sources(str(tmp_path / "*.gif"))



def test_a_glob_walks_each_folder_once_and_matches_as_glob_does(tmp_path: Path, monkeypatch: pytest.MonkeyPatch
                                                                 ) -> None:
    """glob's ** followed a link back up until the path grew too long: one image listed 41 times, or, with two
    loops, a run that printed nothing for minutes. Now each folder is walked once, as a folder SOURCE is."""
    d = tmp_path / "gl" / "d"
    _jpg(d / "x.jpg")
    (d / "up").symlink_to("..")
    (d / "self").symlink_to(".")
    assert [r.path for r in list_sources(str(tmp_path / "gl" / "**" / "*.jpg")).items] == [str(d / "x.jpg")]
    # glob's own matching otherwise: ** any folders (none too), * within a name, hidden names only when asked
    for name in ("a.jpg", "s/b.jpg", "s/t/c.jpg", ".h.jpg", ".hid/d.jpg", "s/e.png", "s/t/u/f.jpg"):
        _jpg(tmp_path / "m" / name)
    monkeypatch.chdir(tmp_path / "m")
    (tmp_path / "m" / "link").symlink_to("s")  # a second name of a folder, walked under both, as glob does
    for pattern in ("**/*.jpg", "*.jpg", "*/*.jpg", "s/**/*.jpg", "s/*/c.jpg", "**/t/*.jpg", "s/**", ".*/*.jpg",
                    "[as]*/*.?pg", "*/t/**/*.jpg", str(tmp_path / "m" / "s" / "*.jpg"), "l*/*.jpg", "[l]*/t/*.jpg",
                    "s/*/../*.jpg", "./s/*.jpg"):
        want = sorted(p for p in glob.glob(pattern, recursive=True) if not os.path.isdir(p))
        got = [r.path for r in list_sources(pattern).items] + [r.path for r, _ in list_sources(pattern).failed]
        assert sorted(got) == want, pattern


def test_a_source_that_cannot_be_looked_at_is_one_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for source, message in (("", "SOURCE is empty"),
                            (str(tmp_path / ("a" * 300 + ".jpg")), "the name is longer than the file system allows"),
                            (str(tmp_path / ("a" * 300) / "*.jpg"), "the pattern matches no files")):
        with pytest.raises(InputError, match=message):
            list_sources(source)  # the long name was a traceback (OSError: File name too long)
    (tmp_path / "7").write_bytes(b"x")  # a file named like a webcam, given as SOURCE: a file, not a stream
    monkeypatch.chdir(tmp_path)
    found = list_sources("7")  # was failed as "a live stream: give it as SOURCE", given as SOURCE
    assert not found.streams and [why for _, why in found.failed] == ["not an image or video file type (no suffix)"]
    (tmp_path / "loop.jpg").symlink_to("loop.jpg")
    with pytest.raises(InputError, match="loop.jpg: a symbolic link loop"):
        list_sources(tmp_path / "loop.jpg")  # was "broken symbolic link"
    (tmp_path / "gone.jpg").symlink_to("nothing.jpg")
    with pytest.raises(InputError, match="gone.jpg: broken symbolic link"):
        list_sources(tmp_path / "gone.jpg")


def test_a_list_written_by_any_editor_finds_every_name(tmp_path: Path) -> None:
    """A list saved with a byte-order mark and Windows line ends, naming files whose names are not ASCII, finds
    them all; a name holding a NUL byte is one clear failure, not a crash."""
    names = ["a.jpg", "ñandú 鸟.jpg", "b.png"]
    for name in names:
        _jpg(tmp_path / name)
    lst = tmp_path / "list.txt"
    lst.write_bytes(b"\xef\xbb\xbf" + "\r\n".join(names).encode() + b"\r\n\r\n")
    found = list_sources(lst).items
    assert [Path(r.path).name for r in found] == names
    for ref in found:
        assert read_image(ref.path).shape == (40, 60, 3)
    lst.write_bytes(b"a.jpg\nb\x00c.jpg\n")
    refs = list_sources(lst).items
    with pytest.raises(ImageReadError, match="NUL byte"):
        read_image(refs[1].path)


def test_a_list_of_non_ascii_names_in_the_c_locale(tmp_path: Path) -> None:
    """Where Python decodes file names as ASCII (the C locale, no UTF-8 mode), a list's UTF-8 names still name
    their files: a list is decoded as the system decodes file names, each byte kept."""
    import subprocess
    import sys

    name = "ñandú 鸟.jpg"
    _jpg(tmp_path / name)
    (tmp_path / "list.txt").write_bytes(name.encode() + b"\n")
    code = ("import sys; from toolkit.io.sources import list_sources; from toolkit.io.decode import read_image; "
            "assert sys.getfilesystemencoding() == 'ascii', sys.getfilesystemencoding(); "
            "refs = list_sources(sys.argv[1]).items; print(len(refs), read_image(refs[0].path).shape)")
    env = {**os.environ, "LC_ALL": "C", "LANG": "C", "PYTHONUTF8": "0", "PYTHONCOERCECLOCALE": "0"}
    done = subprocess.run([sys.executable, "-c", code, str(tmp_path / "list.txt")], env=env, capture_output=True,
                          text=True, encoding="utf-8", errors="replace", timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.split() == ["1", "(40,", "60,", "3)"]


def test_an_address_that_is_no_url_is_one_line(tmp_path: Path) -> None:
    """A SOURCE URL that cannot be parsed (an IPv6 host left open, a port that is not a number) is refused in one
    line; in a list, it is one failure and the rest go on; a stream address of bytes that are not UTF-8 is refused
    (it crashed OpenCV's reader). Each was a traceback or a crash."""
    for bad in ("http://[::1/a.jpg", "https://host:abc/a.jpg", "http://a b.com/x.jpg"):
        with pytest.raises(InputError, match="not a valid URL"):
            list_sources(bad)
    good = _jpg(tmp_path / "a.jpg")
    lst = tmp_path / "list.txt"
    lst.write_text(f"{good}\nhttp://[::1/b.jpg\n")
    got = list_sources(lst)
    assert [Path(r.path).name for r in got.items] == ["a.jpg"]
    assert [(r.path, why.split(" (")[0]) for r, why in got.failed] == [("http://[::1/b.jpg", "not a valid URL")]
    streams = tmp_path / "cams.streams"
    streams.write_bytes(b"rtsp://cam/1\n\xff\n")
    with pytest.raises(InputError, match=r"\\xff: not a stream address"):
        list_sources(streams)

def test_read_image_channels_depth_and_orientation(tmp_path: Path) -> None:
    gray = tmp_path / "g.png"
    cv2.imwrite(str(gray), np.full((10, 20), 200, np.uint8))
    assert read_image(str(gray)).shape == (10, 20, 3)
    rgba = tmp_path / "rgba.png"
    cv2.imwrite(str(rgba), np.full((10, 20, 4), 100, np.uint8))
    assert read_image(str(rgba)).shape == (10, 20, 3)
    deep = tmp_path / "16.png"
    cv2.imwrite(str(deep), np.full((10, 20, 3), 65535, np.uint16))
    img = read_image(str(deep))
    assert img.dtype == np.uint8 and img.max() == 255
    # non-ASCII path and spaces
    odd = _jpg(tmp_path / "über bild.jpg")
    assert read_image(str(odd)).shape == (40, 60, 3)


@pytest.mark.parametrize(("content", "reason"), [
    (b"", "empty file"),
    (b"hello, not an image", "text, not an image; re-copy the image itself"),
    (b"<!DOCTYPE html><html><body>404</body></html>", "an HTML page, not an image"),
    # a video named .jpg was told to re-copy or re-export the file (a URL's or an object's was told what it is)
    (b"\x00\x00\x00\x18ftypmp42" + bytes(64), "a video, not an image; name it with a video suffix"),
    (os.urandom(5000), "cannot decode"),
])
def test_read_image_failures(tmp_path: Path, content: bytes, reason: str) -> None:
    p = tmp_path / "bad.jpg"
    p.write_bytes(content)
    with pytest.raises(ImageReadError, match=reason) as e:
        read_image(str(p))
    assert str(p) in str(e.value)


def test_truncated_jpeg_and_missing(tmp_path: Path) -> None:
    good = _jpg(tmp_path / "good.jpg", 200, 200)
    cut = tmp_path / "cut.jpg"
    cut.write_bytes(good.read_bytes()[: len(good.read_bytes()) // 2])
    with pytest.raises(ImageReadError, match="truncated JPEG"):
        read_image(str(cut))
    with pytest.raises(ImageReadError, match="file not found"):
        read_image(str(tmp_path / "gone.jpg"))
    link = tmp_path / "dangling.jpg"
    link.symlink_to(tmp_path / "gone.jpg")
    with pytest.raises(ImageReadError, match="broken symbolic link"):
        read_image(str(link))


def test_only_a_line_feed_ends_a_list_line(tmp_path: Path) -> None:
    """File names may hold a form feed, a vertical tab, U+2028 or NEL, which str.splitlines broke lines at: two
    real images became four failures ("x: no suffix", "y.jpg: file not found")."""
    names = ["x\u2028y.jpg", "p\x0cq.jpg", "r\x0bs.jpg", "t\x85u.jpg", "v\x1cw.jpg"]
    for name in names:
        _jpg(tmp_path / name)
    lst = tmp_path / "list.txt"
    lst.write_bytes("".join(f"  {n}\t\r\n" for n in names).encode())
    got = list_sources(lst)
    assert not got.failed and [Path(r.path).name for r in got.items] == names


def test_a_utf16_list_is_read_and_a_binary_one_refused_in_one_line(tmp_path: Path) -> None:
    """Notepad's "Unicode" (UTF-16 with its mark) is a list like any; an image named .txt is one line, not a
    failure for every chunk of its bytes."""
    a, b = _jpg(tmp_path / "a.jpg"), _jpg(tmp_path / "ñ b.jpg")
    for codec in ("utf-16", "utf-16-be"):
        lst = tmp_path / f"{codec}.txt"
        body = "a.jpg\r\nñ b.jpg\r\n".encode(codec)
        lst.write_bytes(body if codec == "utf-16" else b"\xfe\xff" + body)
        got = list_sources(lst)
        assert [r.path for r in got.items] == [str(a), str(b)] and not got.failed, codec
    fake = tmp_path / "img.txt"
    fake.write_bytes(a.read_bytes())
    with pytest.raises(InputError, match=r"img\.txt: not a text list \(it is an image\); give a text file"):
        list_sources(fake)
    (tmp_path / "le.txt").write_bytes("a.jpg\n".encode("utf-16-le"))  # UTF-16 without its mark
    with pytest.raises(InputError, match=r"le\.txt: not a text list \(it holds NUL bytes"):
        list_sources(tmp_path / "le.txt")
    gopro = tmp_path / "gopro.txt"  # text whose bytes 0 and 188 are 'G', as MPEG-TS packets start: still a list
    gopro.write_text("".join(f"GoPro/GOPR{i:04d}.JPG\n" for i in range(1, 13)))
    assert len(list_sources(gopro).items) == 12  # read as a list, not refused as "a video"
    lst = tmp_path / "nul.txt"  # one NUL in one name: that entry fails, the others run
    lst.write_bytes(b"a.jpg\nb\x00c.jpg\n" + b"a.jpg\n" * 40)
    assert len(list_sources(lst).items) == 42


def test_a_glob_without_a_fixed_folder_keeps_the_paths_below_the_current_one(tmp_path: Path,
                                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    """'**/*.jpg' named two files x/same.jpg and y/same.jpg 'same' and 'same.jpg': their outputs flattened into one
    folder, where 'same/**/*.jpg' keeps x/same and y/same."""
    _jpg(tmp_path / "x" / "same.jpg")
    _jpg(tmp_path / "y" / "same.jpg")
    monkeypatch.chdir(tmp_path)
    for pattern in ("**/*.jpg", "*/same.jpg"):
        assert [r.key for r in list_sources(pattern).items] == [os.path.join("x", "same"),
                                                                os.path.join("y", "same")], pattern
        assert [r.path for r in list_sources(pattern).items] == [os.path.join("x", "same.jpg"),
                                                                 os.path.join("y", "same.jpg")], pattern


def test_a_folders_hidden_files_are_skipped_as_detect_py_skips_them_and_counted(tmp_path: Path) -> None:
    """macOS's ._photo.jpg companions failed as undecodable and .thumbnails/ ran as photos; detect.py's glob, and a
    glob SOURCE, leave names starting with '.' out. The summary's note says how many were skipped."""
    _jpg(tmp_path / "a.jpg")
    (tmp_path / "._a.jpg").write_bytes(b"\x00\x05\x16\x07" + b"\x00" * 60)  # an AppleDouble file
    _jpg(tmp_path / ".thumbnails" / "a.jpg")
    _jpg(tmp_path / "sub" / ".b.png")
    _jpg(tmp_path / "sub" / "c.png")
    (tmp_path / ".notes.md").write_text("not an input either way")
    got = list_sources(tmp_path)
    assert [r.key for r in got.items] == ["a", os.path.join("sub", "c")] and not got.failed
    assert len(got.notes) == 1 and got.notes[0].startswith("3 hidden file(s) or folder(s)")
    only = tmp_path / "only"
    _jpg(only / ".x.jpg")
    with pytest.raises(InputError, match="1 hidden file"):
        list_sources(only)


def test_a_list_of_paths_is_checked_as_a_list_files_entries_are(tmp_path: Path) -> None:
    """Detector.predict_iter([...]) took every entry for an image: a video's frames were never run ("name it with a
    video suffix (.mp4)" of an .mp4), a folder or a list failed as undecodable, a file without suffix ran."""
    a = _jpg(tmp_path / "a.jpg")
    (tmp_path / "sub").mkdir()
    (tmp_path / "l.txt").write_text("a.jpg\n")
    (tmp_path / "v.mp4").write_bytes(b"")
    (tmp_path / "nosuffix").write_bytes(a.read_bytes())
    got = list_sources([str(a), str(tmp_path / "v.mp4"), str(tmp_path / "sub"), str(tmp_path / "l.txt"),
                        str(tmp_path / "nosuffix")])
    assert [(Path(r.path).name, r.frame) for r in got.items] == [("a.jpg", None), ("v.mp4", -1)]
    reasons = {Path(r.path).name: why for r, why in got.failed}
    assert reasons["sub"].startswith("a folder, named in a list")
    assert reasons["l.txt"].startswith("a list named in a list")
    assert reasons["nosuffix"].startswith("not an image or video file type (no suffix)")


def test_listing_failures_come_back_in_their_place() -> None:
    """predict_iter and the run's records gave every entry that failed while listing first, out of input order."""
    from toolkit.io.sources import SourceList, in_listing_order

    items = [InputRef("a.jpg", "a"), InputRef("c.jpg", "c"), InputRef("e.mp4", "e", frame=-1)]
    failed = [(InputRef("d", "d"), "d failed"), (InputRef("b", "b"), "b failed"), (InputRef("f", "f"), "f failed")]
    src = SourceList(items, failed, "", order={"a": 0, "b": 1, "c": 2, "d": 3, "e": 4, "f": 5})
    produced = ["a", "c", "e_1", "e_2"]  # e's frames name their video
    got = list(in_listing_order(src, produced, lambda p: p.split("_")[0], lambda ref, why: why))
    assert got == ["a", "b failed", "c", "d failed", "e_1", "e_2", "f failed"]


def test_a_link_loop_or_a_dangling_link_named_as_an_image_says_what_it_is(tmp_path: Path) -> None:
    """In a folder or a glob they failed when read, with the system's words ("cannot read: Too many levels of
    symbolic links") and no fix; as SOURCE they had worded reasons: the same reasons everywhere now."""
    _jpg(tmp_path / "a.jpg")
    (tmp_path / "loop.jpg").symlink_to("loop.jpg")
    (tmp_path / "dang.jpg").symlink_to("gone.jpg")
    for source in (str(tmp_path), str(tmp_path / "*.jpg")):
        got = list_sources(source)
        reasons = {Path(r.path).name: why for r, why in got.failed}
        assert [Path(r.path).name for r in got.items] == ["a.jpg"], source
        assert reasons["loop.jpg"].startswith("a symbolic link loop") and "point it at" in reasons["loop.jpg"]
        assert reasons["dang.jpg"].startswith("broken symbolic link") and "fix or remove" in reasons["dang.jpg"]


def test_a_folder_named_with_a_trailing_slash_in_a_list_says_it_is_a_folder(tmp_path: Path) -> None:
    """'sub/inner/' had the key '' and failed as "its key has a '..' part" (review)."""
    _jpg(tmp_path / "a.jpg")
    (tmp_path / "sub" / "inner").mkdir(parents=True)
    got = list_sources([str(tmp_path / "a.jpg"), str(tmp_path / "sub" / "inner") + "/"])
    assert [why.split(":")[0] for _, why in got.failed] == ["a folder, named in a list"]


def test_many_inputs_of_one_name_are_numbered_in_order(tmp_path: Path) -> None:
    """Each input of a name taken already counted up from _2 again (20,000 list lines of one file: 154 s before the
    first result, 0.3 s now; measured, not asserted); the numbers stay the same and in order."""
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "frame.jpg").write_bytes(b"x")
    (tmp_path / "e").mkdir()
    (tmp_path / "e" / "frame.jpg").write_bytes(b"y")
    (tmp_path / "list.txt").write_text("d/frame.jpg\n" * 3 + "e/frame.jpg\n" + "d/frame.jpg\n" * 2000)
    keys = [r.key for r in list_sources(str(tmp_path / "list.txt")).items]
    assert keys[:5] == ["frame", "frame.jpg", "frame.jpg_2", "frame.jpg_3", "frame.jpg_4"]
    assert keys[-1] == "frame.jpg_2003" and len(set(keys)) == len(keys) == 2004
