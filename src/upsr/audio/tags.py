"""Copy metadata tags from an input to its restored output.

Reading uses mutagen's "easy" interface (ID3 in MP3/WAV, Vorbis comments in FLAC/Ogg, MP4
atoms) and libsndfile's string tags; writing goes through libsndfile's string tags, the subset
WAV (RIFF INFO) and FLAC (Vorbis comments) both hold.
"""

from __future__ import annotations

import contextlib
from pathlib import Path

# mutagen easy key -> libsndfile string tag
_MAP = {
    "title": "title", "artist": "artist", "album": "album", "date": "date", "genre": "genre",
    "tracknumber": "tracknumber", "comment": "comment", "copyright": "copyright",
    "license": "license", "description": "comment",
}
SOUNDFILE_TAGS = ("title", "copyright", "software", "artist", "comment", "date", "album",
                  "license", "tracknumber", "genre")


def read_tags(path: str | Path) -> dict[str, str]:
    """The tags of ``path`` as libsndfile string tags (empty dict when there are none)."""
    tags: dict[str, str] = {}
    with contextlib.suppress(Exception):  # tags are best effort: never fail a file over them
        import soundfile as sf

        with sf.SoundFile(str(path)) as f:
            tags.update({k: v for k, v in f.copy_metadata().items() if v})
    with contextlib.suppress(Exception):
        import mutagen

        m = mutagen.File(str(path), easy=True)
        if m is not None and m.tags is not None:
            for key, value in m.tags.items():
                k = _MAP.get(str(key).lower())
                if k and value and k not in tags:
                    tags[k] = str(value[0] if isinstance(value, list) else value)
    return tags
