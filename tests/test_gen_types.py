from levo_batch.gen_types import FLAG_ORDER, GEN_TYPES, STEM_SUFFIX


def test_stems_and_suffixes_follow_the_decodes():
    assert GEN_TYPES["separate"].stems == ("main", "vocal", "bgm")
    assert GEN_TYPES["separate"].extra_suffixes == ("_vocal", "_bgm")
    for name in ("mixed", "bgm", "vocal"):
        assert GEN_TYPES[name].stems == ("main",) and GEN_TYPES[name].extra_suffixes == ()


def test_only_bgm_changes_what_the_lm_sees():
    assert {t.name for t in GEN_TYPES.values() if t.lm_mode == "bgm"} == {"bgm"}


def test_every_stem_has_a_file_and_every_flag_a_type():
    assert all(stem in STEM_SUFFIX for t in GEN_TYPES.values() for stem, _ in t.decodes)
    assert set(FLAG_ORDER) == set(GEN_TYPES) - {"mixed"}
