"""PII detection for the guardrails: Presidio's pattern recognizers, no NLP model.

| entity type     | recognizer            | what counts                                            |
|-----------------|-----------------------|--------------------------------------------------------|
| EMAIL_ADDRESS   | EmailRecognizer       | name@domain with a known public suffix (bundled list)  |
| PHONE_NUMBER    | PhoneRecognizer       | numbers libphonenumber parses as valid for US/CA, GB,  |
|                 |                       | DE, FR or IN, or in international (+CC) form           |
| CREDIT_CARD     | CreditCardRecognizer  | 12-19 digits of the major networks, Luhn checksum      |
| IBAN_CODE       | IbanRecognizer        | IBANs of the registry's countries, mod-97 checksum     |
| IP_ADDRESS      | IpRecognizer          | IPv4 and IPv6 addresses                                |
| US_SSN          | UsSsnRecognizer       | NNN-NN-NNNN / NNN NN NNNN with valid area/group/serial |

Presidio's AnalyzerEngine needs a spaCy model (not installable here, and a model per language
is not what a gateway should load); the recognizers above work on the text alone. Matches
scoring under 0.4 (Presidio's "very weak" SSN patterns: nine bare digits) are left out: without
context words they flag every order number (so those patterns are not run at all). Overlapping
matches keep the higher score (an SSN is also a plausible phone number).

Importing Presidio imports spaCy (seconds): done once, when the first endpoint with a PII
guardrail is compiled, never by a host that has none.
"""

from __future__ import annotations

import re
import threading
from dataclasses import dataclass
from typing import Any

__all__ = ["PiiDetector", "Span", "detector", "mask"]

# Presidio's PhoneRecognizer scores every valid number 0.4; its weakest SSN patterns 0.05.
_MIN_SCORE = 0.4
_PHONE_REGIONS = ("US", "GB", "DE", "FR", "IN")
# Cheap gates: a recognizer runs only on text that could hold what it looks for.
_DIGIT = re.compile(r"\d")
# Presidio's IPv6 regex tries a long alternation at every position (about 2 ms for 4 KB of
# prose with numbers on a slow core). Every IPv6-family pattern (IPv6, `::`, IPv4-mapped and
# -embedded) has two colons at most 4 hex digits apart, and IPv4 needs four dotted groups:
# each half runs only where its gate matches.
_IPV6_GATE = re.compile(r"[0-9A-Fa-f]{0,4}:[0-9A-Fa-f]{0,4}:")
_IPV4_GATE = re.compile(r"\d\.\d{1,3}\.\d{1,3}\.\d")
# Runs that could be phone numbers (7+ digits with separators). libphonenumber's matcher parses
# every number it sees (a year, a price: 5-7 ms a region for 4 KB of prose); it is given
# these runs alone, so a prompt costs what its phone-like runs cost.
_PHONE_RUN = re.compile(r"\+?\(?\d[\d \t().\-/]{5,}\d")
_PHONE_DIGITS = 7
# ISO dates (2024-07-15, 2024/07/15) look like runs of digits but are never phone numbers.
_DATE = re.compile(r"\d{4}[-/.]\d{1,2}[-/.]\d{1,2}")


@dataclass(frozen=True, slots=True)
class Span:
    start: int
    end: int
    entity_type: str
    score: float


@dataclass(frozen=True, slots=True)
class _Found:
    """A phone match placed in the whole text (Presidio's results are relative to the run)."""

    start: int
    end: int
    entity_type: str
    score: float


class PiiDetector:
    """Finds PII spans in a text; thread-safe (the recognizers keep no state per call)."""

    def __init__(self) -> None:
        import tldextract
        from presidio_analyzer.predefined_recognizers import (
            CreditCardRecognizer,
            EmailRecognizer,
            IbanRecognizer,
            IpRecognizer,
            PhoneRecognizer,
            UsSsnRecognizer,
        )

        # tldextract's default extractor downloads the public suffix list on first use: this
        # one uses the snapshot bundled with the package and writes no cache.
        offline = tldextract.TLDExtract(suffix_list_urls=(), cache_dir=None)

        class OfflineEmail(EmailRecognizer):
            def validate_result(self, pattern_text: str) -> bool:
                return offline(pattern_text).fqdn != ""

        self._email = OfflineEmail()
        ipv4 = [p for p in IpRecognizer.PATTERNS if p.name == "IPv4"]
        self._ipv4 = IpRecognizer(patterns=ipv4)
        self._ipv6 = IpRecognizer(patterns=[p for p in IpRecognizer.PATTERNS if p not in ipv4])
        # Behind the digit gate: cards, IBANs and SSNs need digits. Only the SSN patterns
        # that score _MIN_SCORE or more (UsSsnRecognizer validates nothing up, so its "very
        # weak" ones never would): each pattern is one more pass over the text.
        ssn = [p for p in UsSsnRecognizer.PATTERNS if p.score >= _MIN_SCORE]
        self._digits: list[Any] = [
            CreditCardRecognizer(),
            IbanRecognizer(),
            UsSsnRecognizer(patterns=ssn),
        ]
        self._phone = PhoneRecognizer(supported_regions=_PHONE_REGIONS)

    def find(self, text: str) -> list[Span]:
        """The PII spans of `text`, in order, without overlaps."""
        found: list[Any] = []
        if "@" in text:
            found += self._email.analyze(text, self._email.supported_entities)
        if ":" in text and _IPV6_GATE.search(text) is not None:
            found += self._ipv6.analyze(text, self._ipv6.supported_entities)
        if _DIGIT.search(text) is not None:
            if _IPV4_GATE.search(text) is not None:
                found += self._ipv4.analyze(text, self._ipv4.supported_entities)
            for recognizer in self._digits:
                found += recognizer.analyze(text, recognizer.supported_entities)
            found += self._phones(text, [(r.start, r.end) for r in found])
        spans = sorted(
            (Span(r.start, r.end, r.entity_type, r.score) for r in found if r.score >= _MIN_SCORE),
            key=lambda s: (s.start, -s.score, -(s.end - s.start)),
        )
        kept: list[Span] = []
        for span in spans:
            if kept and span.start < kept[-1].end:
                if span.score > kept[-1].score:
                    kept[-1] = span
                continue
            kept.append(span)
        return kept

    def _phones(self, text: str, taken: list[tuple[int, int]]) -> list[Any]:
        """Phone numbers in the phone-like runs that no stronger match (a card, an IBAN, an
        SSN: all score above a phone's 0.4) covers already."""
        found: list[Any] = []
        seen: dict[str, list[tuple[int, int, float]]] = {}  # a run repeated is parsed once
        for run in _PHONE_RUN.finditer(text):
            piece = run.group()
            if (
                sum(c.isdigit() for c in piece) < _PHONE_DIGITS
                or _DATE.fullmatch(piece)
                or any(s <= run.start() and run.end() <= e for s, e in taken)
            ):
                continue
            hits = seen.get(piece)
            if hits is None:
                results = self._phone.analyze(piece, self._phone.supported_entities)
                hits = seen[piece] = [(r.start, r.end, r.score) for r in results]
            at = run.start()
            found += [_Found(at + s, at + e, "PHONE_NUMBER", score) for s, e, score in hits]
        return found


def mask(text: str, spans: list[Span]) -> str:
    """`text` with each span replaced by `<ENTITY_TYPE>` (Presidio's anonymizer default)."""
    if not spans:
        return text
    out: list[str] = []
    at = 0
    for span in spans:
        out.append(text[at : span.start])
        out.append(f"<{span.entity_type}>")
        at = span.end
    out.append(text[at:])
    return "".join(out)


_detector: PiiDetector | None = None
_lock = threading.Lock()


def detector() -> PiiDetector:
    """The process's detector, built on first use."""
    global _detector
    if _detector is None:
        with _lock:
            if _detector is None:
                _detector = PiiDetector()
    return _detector
