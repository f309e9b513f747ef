"""The seven emotions, in FER-2013 label order (0..6). Every array of probabilities uses this order."""

EMOTIONS: tuple[str, ...] = ("angry", "disgust", "fear", "happy", "sad", "surprise", "neutral")
NUM_EMOTIONS = len(EMOTIONS)

# One colour per emotion everywhere: the dashboard's charts, annotated videos and analysis reports.
EMOTION_COLORS: dict[str, str] = {"angry": "#e4572e", "disgust": "#76b041", "fear": "#8f5bd6", "happy": "#f2c14e",
                                  "sad": "#3a86ff", "surprise": "#ff7eb6", "neutral": "#9aa5b1"}


def color_bgr(emotion: str) -> tuple[int, int, int]:
    """An emotion's colour as OpenCV draws it (blue, green, red)."""
    value = EMOTION_COLORS[emotion].lstrip("#")
    red, green, blue = (int(value[i:i + 2], 16) for i in (0, 2, 4))
    return blue, green, red

# Folder names used by public emotion datasets (FER-2013 image release, CK+, JAFFE, RAF-DB, ...),
# mapped to our label index. Names outside the seven (contempt, ...) map to None and are skipped.
EMOTION_ALIASES: dict[str, int | None] = {
    "angry": 0, "anger": 0, "an": 0,
    "disgust": 1, "disgusted": 1, "di": 1,
    "fear": 2, "fearful": 2, "afraid": 2, "scared": 2, "fe": 2,
    "happy": 3, "happiness": 3, "joy": 3, "ha": 3,
    "sad": 4, "sadness": 4, "sa": 4,
    "surprise": 5, "surprised": 5, "su": 5,
    "neutral": 6, "ne": 6, "calm": 6,
    "contempt": None, "unknown": None, "nf": None,
}


def emotion_index(name: str) -> int | None:
    """Label index for a dataset folder name; None for a known emotion outside our seven.

    Raises KeyError for a name that is not an emotion at all, so typos surface instead of vanishing.
    """
    key = name.strip().lower().replace("-", "").replace("_", "")
    if key in EMOTION_ALIASES:
        return EMOTION_ALIASES[key]
    raise KeyError(f"unknown emotion folder name: {name!r}")
