"""Lyric normalisation and error rates, on lyrics written in upstream's test100 format (tags, `.` between
phrases, ` ; ` / `; ` / `;` between sections) and on Whisper-style transcripts of them."""

from __future__ import annotations

import pytest

from levo_batch.evaluate.lyrics import Errors, edit_distance, phonemes, score_lyrics, tokens

# Lines in the shape of upstream's sample/test100_v2_sg_des.jsonl (rows 1 and 51, shortened).
ZH = "[intro-medium]; [verse] 漂泊在无尽的沧海.寻觅那颗失落的心 ; [chorus] 让一切重新开始;[inst-medium] ; [outro-medium]"
EN = ("[intro-medium] ; [verse] Starlight sprinkles on the dress. Moonlight fills the chest. ; "
      "[chorus] Is the well's reward. Grandma's palm fan sways. ; [inst-medium] ; [outro-medium]")


def test_tokens_drop_tags_separators_and_punctuation():
    assert tokens(ZH) == list("漂泊在无尽的沧海寻觅那颗失落的心让一切重新开始")
    assert tokens(EN) == ["starlight", "sprinkles", "on", "the", "dress", "moonlight", "fills", "the", "chest",
                          "is", "the", "well's", "reward", "grandma's", "palm", "fan", "sways"]


def test_tokens_of_a_whisper_style_transcript():
    text = "[Music] Starlight sprinkles on the dress, moonlight fills the chest! Grandma\u2019s palm fan sways..."
    assert tokens(text) == ["starlight", "sprinkles", "on", "the", "dress", "moonlight", "fills", "the",
                            "chest", "grandma's", "palm", "fan", "sways"]
    assert tokens("漂泊在无尽的沧海，寻觅那颗心。Hello！") == list("漂泊在无尽的沧海寻觅那颗心") + ["hello"]


def test_chinese_phonemes_are_toneless_initials_and_finals_read_in_context():
    assert phonemes(tokens("漂泊在")) == ["p", "iao", "b", "o", "z", "ai"]
    assert phonemes(tokens("长大")) == ["zh", "ang", "d", "a"]  # polyphonic 长 read from its phrase
    assert phonemes(tokens("长度")) == ["ch", "ang", "d", "u"]
    assert phonemes(tokens("月一")) == ["ve", "i"]  # syllables without an initial
    assert phonemes(tokens("無盡的滄海")) == phonemes(tokens("无尽的沧海"))  # Whisper's traditional script


def test_english_phonemes_from_the_cmu_dictionary():
    assert phonemes(["moonlight"]) == ["M", "UW", "N", "L", "AY", "T"]
    assert phonemes(["well's"]) == ["W", "EH", "L", "Z"]  # possessive of a known stem
    assert phonemes(["qzxv"]) == ["q", "z", "x", "v"]  # unknown words are spelled
    assert phonemes(["hello", "沧", "海", "ok"])[:4] == ["HH", "AH", "L", "OW"]
    assert phonemes(["hello", "沧", "海"])[4:] == ["c", "ang", "h", "ai"]


def test_edit_distance():
    assert edit_distance("kitten", "sitting") == 3
    assert edit_distance([], ["a", "b"]) == 2 and edit_distance(["a"], []) == 1
    assert edit_distance(["a", "b", "c"], ["a", "c"]) == 1


def test_scores_of_exact_partial_and_empty_transcripts():
    exact = score_lyrics(EN, "Starlight sprinkles on the dress. Moonlight fills the chest. Is the well's reward. "
                             "Grandma's palm fan sways.")
    assert exact.per.edits == exact.wer.edits == exact.cer.edits == 0 and exact.wer.length == 17
    one = score_lyrics("[verse] Sing it loud ; [chorus] Hello there", "sing it proud, hello there")
    assert one.wer == Errors(1, 5) and one.per == Errors(2, 15)  # loud -> proud: L->P substituted, R inserted
    zh = score_lyrics(ZH, "")
    assert zh.wer.rate == 1.0 and zh.per.rate == 1.0
    assert score_lyrics("[inst-medium] ; [outro-medium]", "la la").per.rate is None


def test_traditional_script_costs_characters_but_not_phonemes():
    score = score_lyrics("[verse] 漂泊在无尽的沧海", "漂泊在無盡的滄海")
    assert score.per == Errors(0, 15) and score.cer == Errors(3, 8)  # 无 (wu) has no initial


def test_errors_pool_by_summing():
    assert (Errors(1, 10) + Errors(3, 30)).rate == pytest.approx(0.1)
