"""Which option a generated answer names (its letter or its words), read as the public harnesses read them."""

from __future__ import annotations

import re
import string
from collections.abc import Sequence

LABELS = string.ascii_uppercase  # option i is shown as LABELS[i] (data.prompt.format_question)
THINKING_END = "</think>"  # a reasoning model's answer follows its last thinking block

# "The answer is (B)", "Answer: B", "The best option is D.", "I choose C", and "Option B" opening the text; a
# mere mention ("option B and option C are close") is not one
_PHRASE = re.compile(
    r"\b(?:(?P<noun>answer|option|choice)(?P<link>\s+(?:is|would\s+be|should\s+be)\s*[:\-]?|\s*[:\-])?"
    r"|i\s+(?:choose|select|pick))\s*(?P<open>[(\[])?(?P<letter>[A-Za-z])(?P<close>[)\]])?(?![A-Za-z])",
    re.IGNORECASE,
)
# "B. dunking", "(B) dunking", "B) dunking", "B: dunking", "b. dunking", "B\nbecause ..." (not "A man ...")
_LEADING = re.compile(r"^(?:[(\[]([A-Za-z])[)\]]|([A-Za-z])[.:)](?=\s|$)|([A-Z])\s*(?:\n|$))")
_BARE = re.compile(r"^[(\[]?([A-Za-z])[)\]]?$")
_PARENTHESISED = re.compile(r"\(([A-Z])\)")
_STANDALONE = re.compile(r"(?<![A-Za-z0-9'’])([A-Z])(?![A-Za-z0-9'’])")
# "A man", "I think": the article and the pronoun, not labels; "A or C", "A is wrong" still name option A
_ENGLISH_WORD = re.compile(r"\s+(?!(?:or|and|is|was|seems|fits|matches)\b)[a-z]")
_ABBREVIATION = re.compile(r"\.[A-Za-z]")  # "A.I.", "U.S."


def _normalise(text: str) -> str:
    """Lower case, one space between words, no surrounding quotes or final full stop."""
    return " ".join(text.lower().split()).strip("\"'`“”‘’ ").rstrip(".!?;,").strip()


def _label(letter: str, count: int) -> int | None:
    index = LABELS.find(letter.upper())
    return index if 0 <= index < count else None


def _last_label(matches: list[tuple[int, str]], count: int) -> int | None:
    """The last (position, letter) that names an option."""
    named = [(position, _label(letter, count)) for position, letter in matches]
    named = [(position, index) for position, index in named if index is not None]
    return max(named)[1] if named else None


def _option_mentions(response: str, options: Sequence[str]) -> int | None:
    """The option whose words the response mentions last; an option mentioned only inside a longer option's
    words ("red" in "red car") does not count."""
    spans = []
    for index, option in enumerate(options):
        words = _normalise(option)
        if words:
            pattern = r"(?<!\w)" + re.escape(words) + r"(?!\w)"
            spans += [(m.start(), m.end(), index) for m in re.finditer(pattern, response)]
    inside = lambda a, b: b[0] <= a[0] and a[1] <= b[1] and (a[1] - a[0]) < (b[1] - b[0])
    spans = [a for a in spans if not any(inside(a, b) for b in spans)]
    return max(spans, key=lambda s: (s[0], s[1] - s[0]))[2] if spans else None


def extract_choice(text: str, options: Sequence[str]) -> int | None:
    """The index of the option a generated `text` names, or None when it names none.

    Rules, the first that applies wins (reading order of lmms-eval's `extract_mcq_answer`,
    `lmms_eval/tasks/_task_utils/mcq_extract.py`: an explicit format outranks a loose one, and among
    matches of one rule the last in the text wins, so "A is wrong, the answer is B" -> B):
      1. the whole answer is a letter: "B", "(B)", "[b]", "B." (a letter past the options -> None);
      2. an answer phrase then a letter: "The answer is (B)", "Answer: B", "The best option is D.",
         "I choose C", "Option B" opening the answer (lmms-eval's answer phrases; Molmo2's
         `VideoMMEEval.extract_characters_regex` removes the same prefixes before it reads the letter);
      3. the answer starts with a letter and a delimiter: "B. dunking", "(B) ...", "B) ...", "B: ..."
         (Molmo2's `em_start` metric for MVBench, MotionBench, MLVU, VideoEval-Pro; TempCompass'
         "A." / "A)" rules) -- but not "A man is ...";
      4. the answer is an option's words, case and spacing aside: "Dunking a basketball." (Molmo2's
         `select_mc_option`, `olmo/eval/vqa.py`, first rule);
      5. a letter in parentheses anywhere: "... so (C)" (lmms-eval's highest in-text format);
      6. a standalone capital letter anywhere: "I think B fits" (lmms-eval's "space"/"end" formats,
         Molmo2's and lmms-eval's PerceptionTest `\\b([A-D])\\b`); "A" and "I" followed by a lower-case
         word are English words ("A man ...", "I cannot ..."), not labels, unless the word is one that
         follows a label ("A or C", "A is wrong");
      7. an option's words inside the answer: "the man is dunking a basketball" (the MMMU rule of
         lmms-eval's `parse_multi_choice_response` in nextqa / tomato `utils.py`, and of Molmo2's
         `nextqa_mc`: the option mentioned last wins).
    A reasoning model's `<think>...</think>` is skipped. Unlike the harnesses, nothing is guessed: where
    lmms-eval's NExT-QA and LongVideoBench parsers draw a random letter (right 1/k of the time), or fall
    back to any capital letter in the text, this returns None ("I cannot answer" -> None).
    """
    count = len(options)
    response = text.rsplit(THINKING_END, 1)[-1].strip().strip("\"'`“”‘’*").strip()
    if not response or not count:
        return None
    bare = _BARE.match(response.rstrip(".:;,!"))
    if bare:
        return _label(bare.group(1), count)
    phrases = []
    for m in _PHRASE.finditer(response):
        letter, after = m.group("letter"), response[m.end() : m.end() + 1]
        stated = not m.group("noun") or m.group("link") or m.start() == 0
        explicit = letter.isupper() or (m.group("open") and m.group("close")) or after in ("", *".,;:!?")
        if stated and explicit:
            phrases.append((m.start("letter"), letter))
    chosen = _last_label(phrases, count)
    if chosen is not None:
        return chosen
    leading = _LEADING.match(response)
    if leading:
        chosen = _label(next(g for g in leading.groups() if g), count)
        if chosen is not None:
            return chosen
    normalised = _normalise(response)
    exact = [i for i, option in enumerate(options) if _normalise(option) == normalised]
    if len(exact) == 1:
        return exact[0]
    chosen = _last_label([(m.start(1), m.group(1)) for m in _PARENTHESISED.finditer(response)], count)
    if chosen is not None:
        return chosen
    standalone = [
        (m.start(1), m.group(1))
        for m in _STANDALONE.finditer(response)
        if not (m.group(1) in "AI" and _ENGLISH_WORD.match(response, m.end(1)))
        and not _ABBREVIATION.match(response, m.end(1))
    ]
    chosen = _last_label(standalone, count)
    if chosen is not None:
        return chosen
    return _option_mentions(normalised, options)


def extract_yes_no(text: str) -> str | None:
    """ "yes" or "no" when a generated `text` starts with that word (case aside), else None: TempCompass'
    `extract_pred` (`eval_yes_no.py`; Molmo2's `temp_compass_utils.py`), read by whole words, so "Not
    sure" is not "no"."""
    words = re.match(r"[\s\"'`*]*(yes|no)\b", text.rsplit(THINKING_END, 1)[-1], re.IGNORECASE)
    return words.group(1).lower() if words else None
