"""The grid: comma lists and teacher:student pairs from the command line, and the named pair presets."""
from __future__ import annotations

from .errors import LaunchError

#: Named teacher:student pair presets for ``--pairs``.
PAIR_PRESETS: dict[str, tuple[tuple[str, str], ...]] = {
    # the five teacher -> student pairs of the CMI / Fast-Datafree CIFAR tables
    "standard": (("resnet34", "resnet18"), ("vgg11", "resnet18"), ("wrn40_2", "wrn16_1"),
                 ("wrn40_2", "wrn40_1"), ("wrn40_2", "wrn16_2")),
}


def split_list(text: str, flag: str) -> list[str]:
    items = [s.strip() for s in str(text).split(",") if s.strip()]
    if not items:
        raise LaunchError(f"{flag} is empty")
    return list(dict.fromkeys(items))


def expand_pairs(text: str, spec) -> list[tuple[str, str]]:
    """``'t1:s1,t2:s2'``, ``'default'`` (the dataset's own pair) or a preset name -> [(teacher, student)]."""
    text = text.strip()
    if text == "default":
        return [(spec.default_teacher, spec.default_student)]
    if text in PAIR_PRESETS:
        return list(PAIR_PRESETS[text])
    pairs = []
    for item in split_list(text, "--pairs"):
        teacher, sep, student = item.partition(":")
        if not sep or not teacher.strip() or not student.strip():
            raise LaunchError(f"--pairs expects teacher:student items or one of default, "
                              f"{', '.join(PAIR_PRESETS)}; got {item!r}")
        pairs.append((teacher.strip(), student.strip()))
    return list(dict.fromkeys(pairs))
