"""The paper quotes only what ``results/`` produces (``python -m paper``; no LaTeX needed here)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from paper import readme
from paper.__main__ import generate, missing_figures, write
from paper.data import Results
from paper.numbers import PREFIXES, Macros

ROOT = Path(__file__).resolve().parent.parent
PAPER = ROOT / "paper"

#: names that contain digits and are not results (models, number formats)
ALLOWED_NAMES = ("SmolLM2-135M-Instruct", "SmolLM2", "GPT-2", "float64", "float32")
#: commands whose arguments are references, paths or layout, never results
ARGUMENT_COMMANDS = (
    "ref",
    "eqref",
    "label",
    "cite",
    "citet",
    "citep",
    "input",
    "includegraphics",
    "begin",
    "end",
    "bibliography",
    "bibliographystyle",
    "graphicspath",
)
#: in math: a one-digit sub- or superscript (W_1, \eta^2, A^{-1}) and the constants 0, 1, 2 of an identity
MATH_ALLOWED = re.compile(r"[_^]\{?-?\d\}?|(?<![\w.])[012](?![\w.])")


@pytest.fixture(scope="module")
def generated() -> dict[str, str]:
    return generate(Results(ROOT / "results"))


def body(tex: str) -> str:
    """The document body without comments."""
    text = re.sub(r"(?<!\\)%.*", "", tex)
    return text.split(r"\begin{document}", 1)[1].split(r"\end{document}", 1)[0]


def numerals(tex: str) -> list[str]:
    """Every numeral in ``tex``'s body outside the allowed contexts, with some context."""
    text = body(tex)
    for name in ALLOWED_NAMES:
        text = text.replace(name, " ")
    commands = re.compile(rf"\\(?:{'|'.join(ARGUMENT_COMMANDS)})\*?(?:\[[^\]]*\])?\{{[^}}]*\}}(?:\{{[^}}]*\}})?")
    display = re.compile(r"\\begin\{equation\}(.*?)\\end\{equation\}", re.S)
    parts = [MATH_ALLOWED.sub(" ", commands.sub(" ", block)) for block in display.findall(text)]
    text = commands.sub(" ", display.sub(" ", text))
    parts += [
        MATH_ALLOWED.sub(" ", part) if i % 2 else part  # odd parts are inline math
        for i, part in enumerate(re.split(r"(?<!\\)\$", text))
    ]
    return [
        part[max(0, m.start() - 30) : m.end() + 30].replace("\n", " ")
        for part in parts
        for m in re.finditer(r"\d+", part)
    ]


def used_macros(tex: str) -> set[str]:
    return {m for m in re.findall(r"\\([A-Za-z]+)", body(tex)) if m.startswith(PREFIXES)}


def defined_macros(numbers_tex: str) -> set[str]:
    return set(re.findall(r"\\newcommand\{\\([A-Za-z]+)\}", numbers_tex))


def test_committed_files_are_what_the_generator_writes(generated: dict[str, str], tmp_path: Path) -> None:
    """A changed results/ (or generator) fails here until `python -m paper` is run again."""
    write(generated, tmp_path)
    committed = {p.name: p.read_text() for p in (PAPER / "generated").glob("*.tex")}
    assert sorted(committed) == sorted(generated), "generated files differ in name: run `python -m paper`"
    for name in generated:
        assert (tmp_path / name).read_bytes() == (PAPER / "generated" / name).read_bytes(), (
            f"paper/generated/{name} is stale: run `python -m paper`"
        )


def test_the_hand_written_paper_types_no_number() -> None:
    found = numerals((PAPER / "paper.tex").read_text())
    assert not found, "numerals typed by hand (use a macro from generated/numbers.tex):\n" + "\n".join(found)


def test_the_numeral_check_finds_typed_numbers() -> None:
    """The check itself: a typed rate, interval or setting is found; macros, references and math indices are not."""
    doc = r"\begin{document}%s\end{document}"
    assert len(numerals(doc % "the twin reaches 97.0\\% [95.3, 98.1] after")) == 6  # 97, 0, 95, 3, 98, 1
    assert numerals(doc % r"lr $10^{-4}$") != []
    assert numerals(doc % r"rate \SafetyTwinAfterPct{} in Table~\ref{tab:2} of GPT-2 \cite{a2026}") == []
    assert numerals(doc % r"$W_2 W_1 = I$, $\eta^2 s^2$, $c = 0$, $A^{-1}$ % 97 in a comment") == []
    assert numerals(doc % r"$c = -8$") != []


def test_every_macro_used_is_generated_and_every_generated_macro_is_used(generated: dict[str, str]) -> None:
    used = used_macros((PAPER / "paper.tex").read_text())
    defined = defined_macros(generated["numbers.tex"])
    assert not used - defined, f"paper.tex uses macros the generator does not define: {sorted(used - defined)}"
    assert not defined - used, f"the generator defines numbers the paper never quotes: {sorted(defined - used)}"


def test_every_generated_table_is_in_the_paper(generated: dict[str, str]) -> None:
    inputs = set(re.findall(r"\\input\{generated/([\w]+)\.tex\}", (PAPER / "paper.tex").read_text()))
    assert inputs == {name.removesuffix(".tex") for name in generated}


def test_every_figure_the_paper_includes_exists() -> None:
    assert missing_figures() == []


def test_macros_refuse_bad_names_and_duplicates() -> None:
    macros = Macros()
    macros.add("SafetyTwinAfterPct", "97.0\\%", "a rate")
    with pytest.raises(ValueError, match="defined twice"):
        macros.add("SafetyTwinAfterPct", "1", "again")
    with pytest.raises(ValueError, match="letters only"):
        macros.add("Safety2After", "1", "a digit")
    with pytest.raises(ValueError, match="starts with one of"):
        macros.add("Unprefixed", "1", "no known prefix")
    assert macros.render().splitlines()[1] == r"\newcommand{\SafetyTwinAfterPct}{97.0\%}% a rate"


def test_readme_block_is_what_the_generator_renders() -> None:
    current = readme.current(ROOT / "README.md")
    if current is None:
        pytest.skip(f"README.md has no generated block yet ({readme.BEGIN} … {readme.END})")
    assert current == readme.headline(Results(ROOT / "results")), (
        "README headline block is stale: run `python -m paper`"
    )


def test_readme_fill_replaces_only_the_block(tmp_path: Path) -> None:
    path = tmp_path / "README.md"
    path.write_text(f"# title\n\n{readme.BEGIN}\nold\n{readme.END}\n\nafter\n")
    assert readme.fill(path, "| new |\n")
    assert path.read_text() == f"# title\n\n{readme.BEGIN}\n| new |\n{readme.END}\n\nafter\n"
    assert readme.current(path) == "| new |\n"
    path.write_text("no markers\n")
    assert not readme.fill(path, "| new |\n") and path.read_text() == "no markers\n"
