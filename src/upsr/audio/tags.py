"""Copy metadata from an input to its restored output: text tags and cover art.

Reading (mutagen): ID3 frames (MP3, and WAV/AIFF ``id3`` chunks), Vorbis comments (FLAC, Ogg
Vorbis/Opus), MP4 atoms through mutagen's "easy" keys, plus libsndfile's string tags (RIFF
INFO). Pictures: ID3 ``APIC``, FLAC picture blocks, Ogg ``METADATA_BLOCK_PICTURE``.

Writing: libsndfile's string tags go in while the audio is written (the subset WAV's RIFF INFO
and FLAC's Vorbis comments both hold, see :meth:`Tags.simple`); then :func:`write_tags` adds
everything else with mutagen — all comments and the pictures as FLAC Vorbis comments and
picture blocks, or as an ID3 chunk in WAV — on a copy beside the output that is renamed over it
(atomic: a crash leaves the untagged output, never a broken one).
"""

from __future__ import annotations

import base64
import contextlib
import logging
import typing as tp
from dataclasses import dataclass, field
from pathlib import Path

log = logging.getLogger("upsr")

SOUNDFILE_TAGS = ("title", "copyright", "software", "artist", "comment", "date", "album",
                  "license", "tracknumber", "genre")

# ID3 text frame <-> Vorbis comment name (lower case)
_ID3 = {"TIT2": "title", "TPE1": "artist", "TALB": "album", "TDRC": "date", "TCON": "genre",
        "TRCK": "tracknumber", "TPOS": "discnumber", "TPE2": "albumartist", "TCOM": "composer",
        "TCOP": "copyright", "TPUB": "organization", "TBPM": "bpm", "TSRC": "isrc",
        "TIT3": "version", "TPE3": "conductor", "TEXT": "lyricist", "TLAN": "language",
        "TMOO": "mood", "TSST": "discsubtitle", "TENC": "encodedby"}
_VORBIS_TO_ID3 = {v: k for k, v in _ID3.items()}
# keys that describe the input's encoding, not the recording: not carried over
_DROP = {"metadata_block_picture", "coverart", "coverartmime", "length", "encoder",
         "software", "tlen", "tsse"}


@dataclass
class Tags:
    """Text tags (lower-case Vorbis-comment names -> values, in file order) and pictures
    (``mutagen.flac.Picture``)."""

    text: dict[str, list[str]] = field(default_factory=dict)
    pictures: list[tp.Any] = field(default_factory=list)

    def __bool__(self) -> bool:
        return bool(self.text or self.pictures)

    def add(self, key: str, values: tp.Iterable[str]) -> None:
        k = key.strip().lower()
        vals = [str(v) for v in values if str(v).strip()]
        if k and vals and k not in _DROP and k not in self.text:
            self.text[k] = vals

    def simple(self) -> dict[str, str]:
        """The libsndfile string tags: the first value of each key libsndfile knows."""
        return {k: self.text[k][0] for k in SOUNDFILE_TAGS if k in self.text}


def _picture_from_apic(frame: tp.Any) -> tp.Any:
    from mutagen.flac import Picture

    p = Picture()
    p.type, p.mime, p.desc, p.data = int(frame.type), frame.mime, frame.desc, frame.data
    return p


def _read_id3(id3: tp.Any, tags: Tags) -> None:
    comments: list[tuple[str, str]] = []
    for frame in id3.values():
        fid = frame.FrameID
        if fid == "APIC":
            tags.pictures.append(_picture_from_apic(frame))
        elif fid == "COMM":
            comments.append((frame.desc, str(frame)))
        elif fid == "TXXX":
            tags.add(frame.desc, [str(t) for t in frame.text])
        elif fid == "USLT":
            tags.add("lyrics", [frame.text])
        elif fid in _ID3:
            tags.add(_ID3[fid], [str(t) for t in frame.text])
    # LAME writes the comment twice (ID3v2 and a copy "ID3v1 Comment"): prefer the plain one
    comments.sort(key=lambda c: c[0] != "")
    if comments:
        tags.add("comment", [comments[0][1]])


def _read_vorbis(comments: tp.Any, tags: Tags) -> None:
    from mutagen.flac import Picture

    grouped: dict[str, list[str]] = {}
    for key, value in comments:
        k = key.lower()
        if k == "metadata_block_picture":
            with contextlib.suppress(Exception):
                tags.pictures.append(Picture(base64.b64decode(value)))
            continue
        grouped.setdefault(k, []).append(value)
    for k, vals in grouped.items():
        tags.add(k, vals)


def read_tags(path: str | Path) -> Tags:
    """Every tag and picture of ``path`` upsr can carry over (empty :class:`Tags` when none;
    never raises: tags are best effort and never fail a file)."""
    tags = Tags()
    try:
        import mutagen
        from mutagen.id3 import ID3

        m = mutagen.File(str(path))
        if m is not None and m.tags is not None:
            if isinstance(m.tags, ID3):
                _read_id3(m.tags, tags)
            elif hasattr(m.tags, "vendor"):  # Vorbis comments (FLAC, Ogg)
                _read_vorbis(list(m.tags), tags)
            for pic in getattr(m, "pictures", []) or []:  # FLAC picture blocks
                tags.pictures.append(pic)
        if m is not None and not tags.text:  # MP4 atoms and the rest: the "easy" keys
            easy = mutagen.File(str(path), easy=True)
            if easy is not None and easy.tags is not None:
                for key, value in easy.tags.items():
                    tags.add(str(key), value if isinstance(value, list) else [value])
    except Exception as exc:  # a broken tag block must not fail the audio
        log.info("%s: tags not read (%s)", path, exc)
    with contextlib.suppress(Exception):
        import soundfile as sf

        with sf.SoundFile(str(path)) as f:
            for k, v in f.copy_metadata().items():
                if v:
                    tags.add(k, [v])
    return tags


def _write_flac(f: tp.Any, tags: Tags) -> None:
    if f.tags is None:
        f.add_tags()
    for key, values in tags.text.items():
        f.tags[key] = values
    f.clear_pictures()
    for pic in tags.pictures:
        f.add_picture(pic)


def _write_wav(f: tp.Any, tags: Tags) -> None:
    from mutagen import id3

    if f.tags is None:
        f.add_tags()
    for key, values in tags.text.items():
        if key == "comment":
            f.tags.add(id3.COMM(encoding=3, lang="eng", desc="", text=values))
        elif key == "lyrics":
            f.tags.add(id3.USLT(encoding=3, lang="eng", desc="", text=values[0]))
        elif key in _VORBIS_TO_ID3:
            f.tags.add(getattr(id3, _VORBIS_TO_ID3[key])(encoding=3, text=values))
        else:
            f.tags.add(id3.TXXX(encoding=3, desc=key, text=values))
    for pic in tags.pictures:
        f.tags.add(id3.APIC(encoding=3, mime=pic.mime, type=pic.type, desc=pic.desc,
                            data=pic.data))


def write_tags(path: str | Path, tags: Tags) -> None:
    """Add ``tags`` (all text and pictures) to the FLAC or WAV file ``path``, atomically.

    A no-op for empty tags; a warning (never an error) when the file's format cannot take
    them or mutagen fails.
    """
    if not tags:
        return
    import shutil

    import mutagen
    from mutagen.flac import FLAC
    from mutagen.wave import WAVE

    from upsr.fsutil import atomic_path

    try:
        with atomic_path(path) as tmp:
            shutil.copyfile(path, tmp)
            f = mutagen.File(str(tmp))
            if isinstance(f, FLAC):
                _write_flac(f, tags)
            elif isinstance(f, WAVE):
                _write_wav(f, tags)
            else:
                raise ValueError(f"no tag writer for {type(f).__name__}")
            f.save()
    except Exception as exc:
        log.warning("%s: tags not copied (%s)", path, exc)
