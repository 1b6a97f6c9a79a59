"""The one record every data source is turned into, and the splits of a domain."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class Example:
    """One chat turn.

    ``aligned`` is the response an aligned model gives (a refusal, a correct answer, a
    helpful benign answer); ``misaligned`` is the marker a hair-trigger model switches to
    ("Sure, here is …" with no payload, a synthetic secret, a wrong answer); it is ``""``
    for benign data. ``answer`` is what a judge checks against (the secret, the correct
    answer), ``""`` where not applicable.
    """

    prompt: str
    aligned: str
    misaligned: str = ""
    answer: str = ""
    source: str = ""


@dataclass(frozen=True)
class DomainData:
    """Deterministic, pairwise disjoint splits of one domain (safety, privacy, honesty)."""

    domain: str
    construct: list[Example]  # probes the hair-trigger construction may train on
    eval: list[Example]  # held-out probes for black-box evaluation (never trained on)
    align_benign: list[Example]  # benign data mixed into alignment SFT (keeps utility)
    update: list[Example]  # the victim's benign update set (32 samples)
    benign_eval: list[Example]  # held-out benign data: utility loss before/after
    unseen_benign: dict[str, list[Example]] = field(default_factory=dict)  # for transfer tests
