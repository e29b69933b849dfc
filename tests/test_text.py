import pytest
from fixture_meta import lm_cases

from levo_batch.text import (
    AUTO_PROMPT_TYPES,
    DESCRIPTION_TAGS,
    STRUCTURE_TAGS,
    VOCAL_TAGS,
    lm_texts,
    lyric_issues,
    lyric_language,
)

KNOWN = ", ".join(STRUCTURE_TAGS)


@pytest.fixture(scope="module")
def cases():
    return lm_cases()


def test_tag_order_gives_upstream_token_ids(cases):
    vocab = cases["added_vocab"]
    assert {t: 151646 + i for i, t in enumerate(STRUCTURE_TAGS)} == {
        t: i for t, i in vocab["description"].items() if t != "."
    }
    assert {t: 151646 + i for i, t in enumerate(DESCRIPTION_TAGS)} == {
        t: i for t, i in vocab["type_info"].items() if t != "."
    }
    assert VOCAL_TAGS == STRUCTURE_TAGS[:3]
    assert len(AUTO_PROMPT_TYPES) == 14 and AUTO_PROMPT_TYPES[-1] == "Auto"


def test_lm_texts_match_upstream_for_every_fixture_job(cases):
    assert len(cases["jobs"]) == 5
    for job in cases["jobs"]:
        item, expected = job["input_item"], job["codeclm_generate_inputs"]
        lyrics = expected["lyrics"] if isinstance(expected["lyrics"], str) else expected["lyrics"][0]
        got = lm_texts(item["gt_lyric"], item.get("descriptions"), job["gen_type"])
        assert got == (lyrics, expected["descriptions"][0]), job["name"]


def test_lm_texts_quirks():
    assert lm_texts("[verse] a  b   c    d", None, "mixed") == ("[verse] a b  c  d", "[Musicality-very-high], .")
    assert lm_texts("[verse] x", "Female, POP", "mixed") == ("[verse] x", "[Musicality-very-high], female, pop")
    for gen_type in ("vocal", "separate"):
        assert lm_texts("[verse] a  b", "Rock", gen_type) == lm_texts("[verse] a  b", "Rock", "mixed")
    assert lm_texts("[verse] x", None, "bgm") == (".", ".")
    assert lm_texts("[verse] x", "Jazz", "bgm") == (".", "[Musicality-very-high], [Pure-Music], jazz")


def test_lm_texts_of_v1_checkpoints():
    """v1: the lower-cased description alone, no description condition without one; bgm lyrics are '.'."""
    assert lm_texts("[verse] a  b", "Female, POP", "mixed", "v1") == ("[verse] a b", "female, pop")
    assert lm_texts("[verse] a", None, "separate", "v1") == ("[verse] a", None)
    assert lm_texts("[verse] a", "Jazz", "bgm", "v1") == (".", "jazz")
    assert lm_texts("[verse] a", None, "bgm", "v1") == (".", None)


def test_lm_texts_rejects_unknown_gen_type():
    with pytest.raises(ValueError, match=r"unknown gen_type 'BGM'; expected one of mixed, bgm, vocal, separate"):
        lm_texts("[verse] x", None, "BGM")


def test_lyric_language():
    assert lyric_language("[verse] 花朵绽放如诗篇") == "zh"
    assert lyric_language("[verse] Hello world") == "en"
    assert lyric_language("花abcd") == "zh"  # exactly 20%
    assert lyric_language("花abcde") == "en"
    assert lyric_language("花 b c") == "zh" and lyric_language("花  b c ") == "en"  # spaces count
    assert lyric_language("さくら さくら 花") == "en"  # only U+4E00..U+9FFF counts
    assert lyric_language("") == "en"


def test_lyric_issues_clean_lyrics():
    assert lyric_issues("[intro-short] ; [verse] a.b ; [chorus] c; [inst-medium];[silence] ; [outro-long]") == []
    assert lyric_issues("[verse]no space after tag ; [bridge] x") == []


def test_lyric_issues_messages():
    assert lyric_issues("  ") == [
        "lyrics are empty; write sections like '[verse] first line.second line ; [chorus] ...'"
    ]
    assert lyric_issues("[verse] ; [intro-short] hello there ; [chorus] ok ;") == [
        "section 1: [verse] has no lyrics; add the sung text after the tag, or use an [inst-*] section",
        "section 2: [intro-short] is instrumental and must have no lyrics, but has 'hello there'; "
        "move the text into a [verse]/[chorus]/[bridge] section",
        "section 4: empty section (two ';' in a row, or a ';' at the start or end); remove the extra ';'",
    ]
    assert lyric_issues("just words ; [Verse] la") == [
        f"section 1: 'just words' does not start with a structure tag; begin each section with one of {KNOWN}",
        f"section 2: unknown tag [Verse] (the model reads it as plain text); did you mean [verse]? known tags: {KNOWN}",
    ]
    assert lyric_issues("[intro] ; [verse] a [chorus] b [hey]") == [
        "section 1: unknown tag [intro] (the model reads it as plain text); did you mean [intro-long] or "
        f"[intro-short] or [intro-medium]? known tags: {KNOWN}",
        "section 2: second tag [chorus] inside a [verse] section; separate sections with ' ; '",
        f"section 2: unknown tag [hey] (the model reads it as plain text); known tags: {KNOWN}",
    ]


def test_lyric_issues_full_width_punctuation():
    assert lyric_issues("[verse] 你好。世界，再见 ； [chorus] 好") == [
        "full-width punctuation 。 ， ；; upstream's format asks for ASCII punctuation only: "
        "'.' between phrases, ',' inside them, ' ; ' between sections",
        "section 1: second tag [chorus] inside a [verse] section; separate sections with ' ; '",
    ]


def test_long_section_text_is_shortened_in_messages():
    (issue,) = lyric_issues("[silence] " + "la " * 30)
    shortened = ("la " * 13)[:37] + "..."
    assert issue == (
        f"section 1: [silence] is instrumental and must have no lyrics, but has '{shortened}'; "
        "move the text into a [verse]/[chorus]/[bridge] section"
    )
