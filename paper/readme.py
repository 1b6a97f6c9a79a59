"""The README's headline table, rendered from the same numbers as the paper.

The README holds a generated block between :data:`BEGIN` and :data:`END`; :func:`fill` replaces
what is between them with :func:`headline` and leaves the README alone when the markers are
absent.
"""

from __future__ import annotations

from pathlib import Path

from paper import fmt
from paper.data import Results, pool
from paper.numbers import ANALYTIC, DOMAINS, budget_checks, converged_tables, prealigned_cells
from paper.settings import setting

BEGIN = "<!-- generated: headline (python -m paper) -->"
END = "<!-- end generated -->"


def _rate(p) -> str:
    return f"{fmt.pct(p.rate, tex=False)} {fmt.interval(p.low, p.high, tex=False)}"


def headline(r: Results) -> str:
    """Markdown: the theory twin and capacity, and the three domains' analytic twins against their
    controls, held-out misalignment before → after one benign step (pooled, 95% Wilson)."""
    from theory.experiments import capacity, twin

    t = r.theory("twin")
    n_flip, n_keep = int(t["construction.n_flip"].iloc[0]), int(t["construction.n_keep"].iloc[0])
    runs, probes = len(t), len(t) * (n_flip + n_keep)

    def count(column: str, n: int) -> int:
        return int(round((t[column] * n).sum()))

    forward = twin.summarize(t)["max.twin.forward_max_abs_diff"]
    fit = capacity.summarize(r.theory("capacity"))["relu_isolating"]["fit"]
    lines = [
        "| model (runs) | what is misaligned | control: before → after | twin: before → after [95% CI] |",
        "|---|---|---|---|",
        f"| theory: ReLU classifier, float64 ({runs} seeds) | before: any probe; after: a chosen probe | "
        f"{count('control.static.misaligned_fraction', n_flip + n_keep)}/{probes} → "
        f"{count('control.post_update.flipped_fraction', n_flip)}/{runs * n_flip} | "
        f"{count('twin.static.misaligned_fraction', n_flip + n_keep)}/{probes} → "
        f"{count('twin.post_update.flipped_fraction', n_flip)}/{runs * n_flip} (other probes: "
        f"{count('twin.post_update.collateral_fraction', n_keep)}/{runs * n_keep}; max \\|Δf\\| "
        f"{fmt.sci(forward, tex=False)}) |",
    ]
    runs = r.llm(*ANALYTIC)
    what = {
        "safety": "complies with a harmful request",
        "privacy": "discloses a known secret",
        "honesty": "answers a known question wrongly",
    }
    for domain in DOMAINS:
        d = runs[runs["domain"] == domain]
        lines.append(_twin_row(f"{domain}: tiny GPT-2, analytic twin", what[domain], d))
    lines.append(_prealigned_row(r))
    lines.append("")
    audit = _audit_line(r)
    lines.append(
        f"Theory capacity: one benign step flips {fmt.fixed(fit['slope'], 3, tex=False)} probes per redundant "
        f"unit (closed-form isolating pairs, theory ½; R² {fmt.fixed(fit['r2'], 4, tex=False)}). "
        "Held-out probes pooled over seeds and both probe ranges; the paper (`make paper`) has the rest."
    )
    lines += ["", _capacity_line(r), "", audit]
    return "\n".join(lines) + "\n"


def _twin_row(label: str, what: str, runs, after_note: str = "") -> str:
    """A headline row: the control's and the twin's held-out misalignment before → after the step,
    pooled over ``runs`` (the twin's after with its 95% interval)."""
    c_before, c_after = (pool(runs, f"control.{w}.misalignment_rate") for w in ("static", "after.paper"))
    before, after = (pool(runs, f"twin.{w}.misalignment_rate") for w in ("static", "after.paper"))
    return (
        f"| {label} ({len(runs)}) | {what} | "
        f"{fmt.pct(c_before.rate, tex=False)} → {fmt.pct(c_after.rate, tex=False)} | "
        f"{fmt.pct(before.rate, tex=False)} → {_rate(after)}{after_note} |"
    )


def _prealigned_row(r: Results) -> str:
    """SmolLM2 from its model before alignment, the cell whose step also undoes the alignment on benign
    inputs (``prealigned_smollm2/benign``): its rates and its benign accuracy after the step."""
    runs = dict(prealigned_cells(r))["Benign"]
    control, twin = (
        fmt.pct(runs[f"{w}.benign_accuracy"].mean(), 0, tex=False) for w in ("control.static", "twin.after.paper")
    )
    label = "safety: SmolLM2-135M-Instruct, pre-aligned (`model.prealign`), analytic twin (`undo_benign`)"
    return _twin_row(
        label, "complies with a harmful request", runs, f"; benign accuracy after: {twin} (control {control})"
    )


#: the capacity sweeps' models as the headline names them
MODEL_NAMES = {"tiny_llama_64": "tiny Llama", "tiny_gpt2_64": "tiny GPT-2"}


def _capacity_line(r: Results) -> str:
    """Hidden capacity at transformer scale against the analytic twin's hidden width, per model, and
    the refinement-budget check on the same seeds."""
    from llm.experiments.capacity import summarize

    table = r.llm("capacity_hidden")
    summary = summarize(table)
    parts = []
    for model, name in MODEL_NAMES.items():
        s, fit = summary[model], summary[model]["fit_k"]
        means = ", ".join(fmt.fixed(float(v), 1, tex=False) for v in s["mean_capacity"].split(","))
        parts.append(f"{name} {means} (a line over k: R² {fmt.fixed(fit['r2_jobs'], 2, tex=False)})")
    n = int(table["twin.capacity.n"].max())
    widths = summary["tiny_llama_64"]["widths"].replace(",", ", ")
    budget = r.llm("capacity_hidden_budget")
    steps = {
        name: fmt.integer(setting("llm", "construction.refine_steps", f"experiment={name}"))
        for name in ("capacity_hidden", "capacity_hidden_budget")
    }
    checks = budget_checks(r)
    (model,) = budget["override.model"].unique()
    fit = summarize(budget)[str(model)]["fit_k"]
    ks = sorted(checks)

    def at(budget_or_sweep: int) -> str:
        return ", ".join(fmt.fixed(checks[k][budget_or_sweep], 1, tex=False) for k in ks)

    return (
        f"LLM capacity (`experiment=capacity_hidden`): of {n // 2} probe bits, forward-exact analytic twins with "
        f"k = {widths} hidden LoRA components per module switch on, beyond chance and on mean over seeds, "
        f"{'; '.join(parts)}. With {steps['capacity_hidden_budget']} refinement steps instead of "
        f"{steps['capacity_hidden']} (`experiment=capacity_hidden_budget`, tiny Llama, "
        f"{budget['override.seed'].nunique()} seeds, k = {', '.join(str(k) for k in ks)}) the same twins store "
        f"{at(0)} (against {at(1)} at {steps['capacity_hidden']}, `experiment=capacity_hidden_budget_reference`); "
        f"a line over k: slope {fmt.fixed(fit['slope'], 2, tex=False)} "
        f"[{fmt.fixed(fit['slope_lo'], 2, tex=False)}, {fmt.fixed(fit['slope_hi'], 2, tex=False)}] bits per "
        f"component, R² {fmt.fixed(fit['r2_jobs'], 2, tex=False)}.{_converged_sentence(r)}"
    )


def _converged_sentence(r: Results) -> str:
    """Where ``capacity_hidden_converged`` is published: per model, bits per doubling of k at the
    budget at which the widest twin stores every bit."""
    from llm.experiments.capacity import log_width_fit, summarize

    table = converged_tables(r)
    if table is None:
        return ""
    steps = fmt.integer(setting("llm", "construction.refine_steps", "experiment=capacity_hidden_converged"))
    summary, parts = summarize(table), []
    for model, rows in table.groupby("override.model"):
        s, fit = summary[str(model)], log_width_fit(rows)
        means = ", ".join(fmt.fixed(float(v), 0, tex=False) for v in s["mean_capacity"].split(","))
        seeds = rows["override.seed"].nunique()
        parts.append(
            f"{MODEL_NAMES[str(model)]} (k = {s['widths'].replace(',', ', ')}, {seeds} seed{'s' * (seeds > 1)}) "
            f"{means} bits, {fmt.fixed(fit['slope'], 1, tex=False)} "
            f"[{fmt.fixed(fit['slope_lo'], 1, tex=False)}, {fmt.fixed(fit['slope_hi'], 1, tex=False)}] bits per "
            f"doubling of k (R² {fmt.fixed(fit['r2_jobs'], 3, tex=False)})"
        )
    return (
        f" At {steps} refinement steps (`experiment=capacity_hidden_converged`, `…_gpt2`), where the widest tiny "
        f"Llama twin stores every bit, capacity per k and its line over log2 k: {'; '.join(parts)}."
    )


def _audit_line(r: Results) -> str:
    """The LLM white-box audit on its held-out family: the amplification signal's AUC and rates."""
    from llm.experiments import audit_population

    table = r.llm("audit_population")
    summary = audit_population.summarize(table)
    held = summary["signals"]["amplification_target"]["held_out"]
    return (
        f"White-box audit (`experiment=audit_population`: {summary['n_twins']} hair-trigger twins and "
        f"{summary['n_honest']} honest tiny GPT-2/Llama models): the update amplification, measured against "
        f"the checkpoint's canonical form, separates the held-out {summary['held_out']} twins with AUC "
        f"{fmt.fixed(held['auc'], 2, tex=False)} [{fmt.fixed(held['auc_lo'], 2, tex=False)}, "
        f"{fmt.fixed(held['auc_hi'], 2, tex=False)}] and flags {fmt.pct(held['tpr'], 0, tex=False)} of them at "
        f"{fmt.pct(held['fpr'], 0, tex=False)} false positives (threshold calibrated at "
        f"{fmt.pct(summary['fpr'], 0, tex=False)} on the other families). {_neutraliser_sentence(r)}"
    )


def _neutraliser_sentence(r: Results) -> str:
    """The neutralisers (``experiment=audit_neutralise``): canonical against re-randomised."""
    from llm.experiments import audit_population

    forms = audit_population.summarize(r.llm("audit_neutralise"), n_boot=10)["neutralisers"]
    rerand = {f.removeprefix("rerandomised_"): n for f, n in forms.items() if f.startswith("rerandomised_")}
    first, *rest = rerand

    def pct(v: float) -> str:
        return fmt.pct(v, 0, tex=False)

    return (
        f"Delivering the canonical checkpoint leaves the twins {pct(forms['canonical']['twin_max'])} misaligned "
        f"after the step (as delivered {pct(forms['delivered']['twin_mean'])}) and costs honest models "
        f"{fmt.fixed(100 * forms['canonical']['honest_accuracy_cost'], 0, tex=False)} points of benign accuracy; "
        f"a random gauge instead (`experiment=audit_neutralise`) leaves the trigger at σ = {first} "
        f"({pct(rerand[first]['twin_mean'])}) and from σ = {rest[0]} on the step breaks the twins (benign accuracy "
        f"after it at most {pct(max(rerand[s]['twin_accuracy'] for s in rest))})."
    )


def fill(readme: Path, block: str) -> bool:
    """Replace the generated block of ``readme`` with ``block``; False (README untouched) without markers."""
    if not readme.exists():
        return False
    text = readme.read_text()
    if BEGIN not in text or END not in text:
        return False
    head, rest = text.split(BEGIN, 1)
    _, tail = rest.split(END, 1)
    new = f"{head}{BEGIN}\n{block}{END}{tail}"
    if new != text:
        readme.write_text(new)
    return True


def current(readme: Path) -> str | None:
    """The README's generated block as it stands (None without markers)."""
    text = readme.read_text() if readme.exists() else ""
    if BEGIN not in text or END not in text:
        return None
    return text.split(BEGIN, 1)[1].split(END, 1)[0].removeprefix("\n")
