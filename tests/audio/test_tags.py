"""Tags and cover art survive ``upsr enhance``: ID3 (MP3, WAV), Vorbis comments and pictures
(FLAC, Ogg Vorbis), checked with mutagen on the files upsr writes."""

import base64
import io
import struct
import zlib
from pathlib import Path

import mutagen
import numpy as np
import pytest
import soundfile as sf
from mutagen import id3
from mutagen.flac import FLAC, Picture
from mutagen.oggvorbis import OggVorbis
from mutagen.wave import WAVE

from upsr.audio import synth

SR = 44100


def _png(w: int = 4, h: int = 3) -> bytes:
    """A real (tiny) PNG image, made by hand."""
    raw = b"".join(b"\x00" + b"".join(bytes((x * 60, y * 80, 128)) for x in range(w))
                   for y in range(h))

    def chunk(kind: bytes, data: bytes) -> bytes:
        return (struct.pack(">I", len(data)) + kind + data
                + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF))

    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b""))


COVER = _png()


def _audio(seconds: float = 0.4) -> np.ndarray:
    return synth.brickwall(synth.music_like(seconds, SR, channels=2, seed=3), SR, 7000)


def _picture() -> Picture:
    p = Picture()
    p.type, p.mime, p.desc, p.data = 3, "image/png", "front", COVER
    return p


def _enhance(run_cli, src: Path, out: Path, *extra) -> Path:
    code, _, err = run_cli("enhance", src, "-o", out, *extra)
    assert code == 0, err
    (made,) = [p for p in out.iterdir() if p.is_file()]
    return made


def _assert_flac_has(path: Path, text: dict[str, list[str]]) -> None:
    f = FLAC(str(path))
    for key, values in text.items():
        assert f.tags[key] == values, key
    assert len(f.pictures) == 1
    pic = f.pictures[0]
    assert (pic.type, pic.mime, pic.desc, pic.data) == (3, "image/png", "front", COVER)


def test_mp3_id3_and_cover_reach_the_flac(run_cli, tmp_path):
    buf = io.BytesIO()
    sf.write(buf, _audio().T, SR, format="MP3")
    src = tmp_path / "in" / "song.mp3"
    src.parent.mkdir()
    src.write_bytes(buf.getvalue())
    tags = id3.ID3()
    tags.add(id3.TIT2(encoding=3, text=["Night Train"]))
    tags.add(id3.TPE1(encoding=3, text=["The Tappers"]))
    tags.add(id3.TALB(encoding=3, text=["Rails"]))
    tags.add(id3.TRCK(encoding=3, text=["7/12"]))
    tags.add(id3.COMM(encoding=3, lang="eng", desc="", text=["recorded live"]))
    tags.add(id3.TXXX(encoding=3, desc="CATALOG", text=["TT-007"]))
    tags.add(id3.APIC(encoding=3, mime="image/png", type=3, desc="front", data=COVER))
    tags.save(str(src))
    out = _enhance(run_cli, src.parent, tmp_path / "out")
    assert out.name == "song.flac"
    _assert_flac_has(out, {"title": ["Night Train"], "artist": ["The Tappers"],
                           "album": ["Rails"], "tracknumber": ["7/12"],
                           "comment": ["recorded live"], "catalog": ["TT-007"]})


def test_flac_comments_and_picture_survive(run_cli, tmp_path):
    src = tmp_path / "in" / "a.flac"
    src.parent.mkdir()
    sf.write(str(src), _audio().T, SR, subtype="PCM_24")
    f = FLAC(str(src))
    f["title"] = "Tide"
    f["artist"] = ["First Artist", "Second Artist"]  # several values of one key
    f["musicbrainz_trackid"] = "5b1c0d9e-0000-4000-8000-000000000001"
    f.add_picture(_picture())
    f.save()
    out = _enhance(run_cli, src.parent, tmp_path / "out")
    _assert_flac_has(out, {"title": ["Tide"], "artist": ["First Artist", "Second Artist"],
                           "musicbrainz_trackid": ["5b1c0d9e-0000-4000-8000-000000000001"]})
    # --no-tags means none
    out = _enhance(run_cli, src.parent, tmp_path / "bare", "--no-tags")
    bare = FLAC(str(out))
    assert not bare.pictures and "title" not in (bare.tags or {})


def test_ogg_vorbis_comments_and_picture_survive(run_cli, tmp_path):
    src = tmp_path / "in" / "v.ogg"
    src.parent.mkdir()
    sf.write(str(src), _audio().T, SR, format="OGG", subtype="VORBIS")
    v = OggVorbis(str(src))
    v["title"] = "Caves"
    v["genre"] = "Game"
    v["metadata_block_picture"] = [base64.b64encode(_picture().write()).decode("ascii")]
    v.save()
    out = _enhance(run_cli, src.parent, tmp_path / "out")
    assert out.suffix == ".flac"
    _assert_flac_has(out, {"title": ["Caves"], "genre": ["Game"]})
    assert "metadata_block_picture" not in FLAC(str(out)).tags  # a picture block, not text


def test_wav_id3_chunk_survives_in_wav(run_cli, tmp_path):
    src = tmp_path / "in" / "w.wav"
    src.parent.mkdir()
    sf.write(str(src), _audio().T, SR, subtype="PCM_16")
    w = WAVE(str(src))
    w.add_tags()
    w.tags.add(id3.TIT2(encoding=3, text=["Field Recording"]))
    w.tags.add(id3.TCOM(encoding=3, text=["Someone"]))
    w.tags.add(id3.APIC(encoding=3, mime="image/png", type=3, desc="front", data=COVER))
    w.save()
    out = _enhance(run_cli, src.parent, tmp_path / "out")
    assert out.suffix == ".wav"
    got = mutagen.File(str(out))
    assert str(got.tags["TIT2"]) == "Field Recording"
    assert str(got.tags["TCOM"]) == "Someone"
    (apic,) = got.tags.getall("APIC")
    assert (apic.mime, apic.type, apic.data) == ("image/png", 3, COVER)
    assert sf.info(str(out)).frames == sf.info(str(src)).frames  # still a readable WAV


def test_unwritable_tags_warn_and_keep_the_audio(tmp_path, caplog):
    from upsr.audio.tags import Tags, write_tags

    path = tmp_path / "x.ogg"
    sf.write(str(path), _audio(0.2).T, SR, format="OGG", subtype="VORBIS")
    before = path.read_bytes()
    with caplog.at_level("WARNING", logger="upsr"):
        write_tags(path, Tags({"title": ["T"]}))
    assert "tags not copied" in caplog.text
    assert path.read_bytes() == before


@pytest.mark.parametrize("broken", [b"ID3\x04\x00\x00\x7f\x7f\x7f\x7f", b""])
def test_broken_tags_never_fail_a_read(tmp_path, broken):
    from upsr.audio.tags import read_tags

    buf = io.BytesIO()
    sf.write(buf, _audio(0.2).T, SR, format="MP3")
    p = tmp_path / "b.mp3"
    p.write_bytes(broken + buf.getvalue())
    assert isinstance(read_tags(p).text, dict)
