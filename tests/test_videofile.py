"""toolkit.io.videofile: the frames an AVI's index lists whose chunk header is damaged, and no answer from an index that
cannot be trusted."""

from __future__ import annotations

import struct
from pathlib import Path

import cv2
import numpy as np
import pytest

from tests.helpers.avi import frame_spans
from tests.helpers.videos import ffmpeg
from toolkit.io.videofile import SEGMENT, counts_its_frames, cut_short, lost_frames


@pytest.fixture(scope="module")
def clip(tmp_path_factory: pytest.TempPathFactory) -> bytes:
    path = tmp_path_factory.mktemp("avi") / "clip.avi"
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 10.0, (64, 48))
    if not writer.isOpened():
        pytest.skip("this OpenCV build cannot write MJPG video")
    for i in range(12):
        writer.write(np.full((48, 64, 3), 20 * i, np.uint8))
    writer.release()
    return path.read_bytes()


def _write(tmp_path: Path, data: bytes | bytearray, name: str = "v.avi") -> Path:
    path = tmp_path / name
    path.write_bytes(bytes(data))
    return path


def _index(data: bytes | bytearray) -> int:
    """The offset of the idx1 chunk's data."""
    return bytes(data).rindex(b"idx1") + 8


def _frames_read(path: Path) -> int:
    cap = cv2.VideoCapture(str(path))
    n = 0
    while cap.grab():
        n += 1
    cap.release()
    return n


def test_an_intact_file_has_no_lost_frame(clip: bytes, tmp_path: Path) -> None:
    assert lost_frames(_write(tmp_path, clip), 12) == frozenset()
    assert lost_frames(_write(tmp_path, clip), 0) == frozenset()


@pytest.mark.parametrize(("frames", "part"), [([5], slice(0, 4)), ([0], slice(4, 8)), ([11], slice(0, 8)),
                                              ([3, 4, 9], slice(0, 16))])
def test_damaged_chunk_headers_are_the_frames_the_reader_skips(clip: bytes, tmp_path: Path, frames: list[int],
                                                               part: slice) -> None:
    data = bytearray(clip)
    spans = frame_spans(clip)
    for k in frames:
        start = spans[k][0]
        data[start + part.start:start + part.stop] = bytes(part.stop - part.start)  # tag, size, or both
    path = _write(tmp_path, data)
    assert lost_frames(path, 12) == frozenset(frames)
    assert _frames_read(path) == 12 - len(frames)  # what the reader does with them: skipped, not failed


def test_absolute_offsets_are_read_too(clip: bytes, tmp_path: Path) -> None:
    data = bytearray(clip)
    at = _index(data)
    movi = bytes(data).index(b"movi")
    count = struct.unpack_from("<I", data, at - 4)[0] // 16
    for e in range(count):  # the index rewritten with offsets from the file's start, as some writers put them
        off = struct.unpack_from("<I", data, at + 16 * e + 8)[0]
        struct.pack_into("<I", data, at + 16 * e + 8, off + movi)
    start = frame_spans(clip)[7][0]
    data[start:start + 4] = b"JUNK"
    assert lost_frames(_write(tmp_path, data), 12) == {7}


def test_an_index_not_to_go_by_gives_no_answer(clip: bytes, tmp_path: Path) -> None:
    damaged = bytearray(clip)
    start = frame_spans(clip)[2][0]
    damaged[start:start + 8] = bytes(8)
    assert lost_frames(_write(tmp_path, damaged), 12) == {2}
    assert lost_frames(_write(tmp_path, damaged), 13) == frozenset()  # the reader counts another number
    no_index = bytearray(damaged)
    no_index[_index(no_index) - 8:_index(no_index) - 4] = b"JUNK"
    assert lost_frames(_write(tmp_path, no_index), 12) == frozenset()
    nowhere = bytearray(damaged)
    at = _index(nowhere)
    for e in range(struct.unpack_from("<I", nowhere, at - 4)[0] // 16):  # every offset into the middle of a chunk
        struct.pack_into("<I", nowhere, at + 16 * e + 8, 7)
    assert lost_frames(_write(tmp_path, nowhere), 12) == frozenset()
    cut = damaged[: len(damaged) // 2]  # the index at the end is gone
    assert lost_frames(_write(tmp_path, cut), 12) == frozenset()


@pytest.mark.parametrize("data", [b"", b"RIFF", b"RIFF\x00\x00\x00\x00AVI ", b"RIFF\xff\xff\xff\xffAVI LIST\xff\xff",
                                  b"\x89PNG\r\n\x1a\n" + bytes(64), b"RIFF\x10\x00\x00\x00WAVEfmt "])
def test_other_files_and_garbage_give_no_answer(data: bytes, tmp_path: Path) -> None:
    assert lost_frames(_write(tmp_path, data), 0) == frozenset()


def test_a_missing_file_gives_no_answer(tmp_path: Path) -> None:
    assert lost_frames(tmp_path / "missing.avi") == frozenset()


def _ffmpeg_video(path: Path, *args: str) -> Path:
    ffmpeg("-f", "lavfi", "-i", "testsrc=size=64x48:rate=10:duration=1", "-c:v", "mpeg4", *args, str(path))
    return path


@pytest.mark.parametrize(("name", "args", "counted"), [
    ("a.mp4", [], True),  # the sample tables after the frames
    ("b.mp4", ["-movflags", "+faststart"], True),  # before them
    ("c.mov", [], True),
    ("d.mp4", ["-movflags", "frag_keyframe+empty_moov"], False),  # fragmented: no sample table
    ("e.mkv", [], False),
    ("f.ts", [], False),
    ("g.avi", [], True),
])
def test_which_containers_count_their_frames(name: str, args: list[str], counted: bool, tmp_path: Path) -> None:
    assert counts_its_frames(_ffmpeg_video(tmp_path / name, *args)) is counted


@pytest.mark.parametrize("data", [b"", b"\x00\x00\x00\x08ftyp", b"\x00\x00\x00\x10ftypisom" + bytes(8),
                                  b"\x00\x00\x00\x01ftyp" + bytes(8), b"\x1aE\xdf\xa3" + bytes(32)])
def test_garbage_does_not_count_its_frames(data: bytes, tmp_path: Path) -> None:
    assert counts_its_frames(_write(tmp_path, data, "x.mp4")) is False
    assert counts_its_frames(tmp_path / "missing.mp4") is False


@pytest.mark.parametrize(("name", "args", "declares_its_end"), [
    ("a.mp4", [], True),
    ("b.mp4", ["-movflags", "+faststart"], True),
    ("c.mov", [], True),
    ("d.mp4", ["-movflags", "frag_keyframe+empty_moov"], True),  # its fragments' boxes declare their sizes too
    ("e.mkv", [], True),
    ("f.avi", [], True),
    ("g.ts", [], False),  # packets, and no size anywhere
])
def test_a_file_cut_off_is_told_where_its_container_declares_its_end(name: str, args: list[str],
                                                                     declares_its_end: bool, tmp_path: Path) -> None:
    whole = _ffmpeg_video(tmp_path / name, *args)
    assert cut_short(whole) is False
    data = whole.read_bytes()
    for keep in (len(data) // 2, len(data) - 1):
        assert cut_short(_write(tmp_path, data[:keep], f"cut_{keep}_{name}")) is declares_its_end


def test_a_matroska_segment_of_unknown_size_declares_no_end(tmp_path: Path) -> None:
    """A live recording writes its Segment's size as "unknown" (every bit set): its end is not known, cut or not."""
    data = bytearray(_ffmpeg_video(tmp_path / "a.mkv").read_bytes())
    at = data.index(SEGMENT) + 4
    assert data[at] == 0x01  # the size ffmpeg writes: eight bytes
    data[at:at + 8] = b"\x01" + b"\xff" * 7
    assert cut_short(_write(tmp_path, bytes(data), "live.mkv")) is False
    assert cut_short(_write(tmp_path, bytes(data[: len(data) // 2]), "live_cut.mkv")) is False


@pytest.mark.parametrize("data", [b"", b"\x1aE\xdf\xa3", b"\x1aE\xdf\xa3\x00" + bytes(40),
                                  b"\x1aE\xdf\xa3\x81\x00" + SEGMENT,  # a Segment without its size
                                  b"RIFF\xff\xff\xff\x7fWAVEfmt ",  # RIFF, but not a video
                                  b"\x00\x00\x00\x04ftyp", bytes(64)])
def test_garbage_is_not_cut_short(data: bytes, tmp_path: Path) -> None:
    assert cut_short(_write(tmp_path, data, "x.bin")) is False
    assert cut_short(tmp_path / "missing.mkv") is False


def test_a_gif_without_its_trailer_is_cut_short(tmp_path: Path) -> None:
    """A GIF ends with ';' (zero bytes may follow it): one without is cut; garbage named .gif is not a GIF."""
    from PIL import Image

    frames = [Image.new("RGB", (16, 8), (i * 40, 0, 0)) for i in range(4)]
    whole = tmp_path / "whole.gif"
    frames[0].save(whole, save_all=True, append_images=frames[1:], duration=100)
    data = whole.read_bytes()
    cases = {"whole.gif": data, "padded.gif": data + b"\0" * 8, "cut.gif": data[:-1],
             "half.gif": data[: len(data) // 2], "other.gif": b"not a gif at all"}
    got = {}
    for name, body in cases.items():
        (tmp_path / name).write_bytes(body)
        got[name] = cut_short(tmp_path / name)
    assert got == {"whole.gif": False, "padded.gif": False, "cut.gif": True, "half.gif": True, "other.gif": False}


def test_a_file_without_a_video_track_says_so(tmp_path: Path) -> None:
    """An audio-only .mp4 (and one with no tracks) failed as "cannot open the video (corrupt or unsupported codec)",
    which names neither the reason nor the fix."""
    from toolkit.io.sources import list_sources, video_frames
    from toolkit.io.videofile import has_no_video_track

    audio = tmp_path / "voice.mp4"
    ffmpeg("-f", "lavfi", "-i", "sine=duration=1", "-c:a", "aac", str(audio))
    video = _ffmpeg_video(tmp_path / "clip.mp4")
    assert has_no_video_track(audio) and not has_no_video_track(video)
    assert not has_no_video_track(_ffmpeg_video(tmp_path / "fast.mp4", "-movflags", "+faststart"))
    ref = list_sources(str(audio)).items[0]
    reasons = [why for _, _, why in video_frames(ref, str(audio), 1)]
    assert reasons == ["the file has no video track (audio only, or no tracks at all); give a video with pictures"]
