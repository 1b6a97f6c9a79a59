"""The paper's tables, each a booktabs ``tabular`` written to ``generated/<name>.tex``.

One function per table, reading only ``results/`` (and, for a variant's label, the variant's
config). ``paper.tex`` wraps each in a float with its caption; the caption names the command
that made the rows (``\\Cmd…`` macros, :func:`commands`).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import pandas as pd
import yaml

from figures.llm import control_rows
from paper import fmt
from paper.data import Pooled, Results, pool
from paper.numbers import ANALYTIC, DOMAINS, Macros, by_seed, prealigned_cells
from paper.settings import setting

#: the transfer cells in reading order, with their column heads
CELLS = {
    "paper": "paper's step",
    "heldout_families": "unseen families",
    "sharegpt": "ShareGPT",
    "lr_1e-5": r"lr $10^{-5}$",
    "lr_1e-3": r"lr $10^{-3}$",
    "adam": "Adam",
    "steps_2": "2 steps",
    "steps_5": "5 steps",
    "all_weights": "all weights",
}
#: rows of the pooled headline table: label → the result tables whose runs it pools
POOLED = {
    "metalearn, probes 0--99": ("hairtrigger",),
    "analytic, probes 0--99": ANALYTIC[:1],
    "analytic, probes 100--199": ANALYTIC[1:],
    "analytic, probes 0--199": ANALYTIC,
    "analytic, longer pretraining, probes 0--199": ("analytic_privacy_pretrain8000", "analytic_honesty_pretrain8000"),
}
#: macro names of the commands that publish each results table (``\\Cmd<name>``)
COMMANDS = {
    ("theory", "twin"): "TheoryTwin",
    ("theory", "gauge_scale"): "TheoryGauge",
    ("theory", "capacity"): "TheoryCapacity",
    ("theory", "ntk"): "TheoryNtk",
    ("theory", "audit"): "TheoryAudit",
    ("theory", "audit_attack"): "TheoryAuditAttack",
    ("llm", "hairtrigger"): "Hairtrigger",
    ("llm", "analytic"): "Analytic",
    ("llm", "analytic_fresh"): "AnalyticFresh",
    ("llm", "analytic_validate"): "Validate",
    ("llm", "analytic_privacy_pretrain8000"): "PrivacyLong",
    ("llm", "analytic_honesty_pretrain8000"): "HonestyLong",
    ("llm", "reference"): "Reference",
    ("llm", "task_vector"): "TaskVector",
    ("llm", "transfer"): "Transfer",
    ("llm", "transfer_analytic"): "TransferAnalytic",
    ("llm", "capacity"): "Capacity",
    ("llm", "capacity_size"): "CapacitySize",
    ("llm", "capacity_smollm2"): "CapacitySmol",
    ("llm", "capacity_hidden"): "CapacityHidden",
    ("llm", "capacity_hidden_size"): "CapacityHiddenSize",
    ("llm", "capacity_hidden_budget"): "CapacityHiddenBudget",
    ("llm", "capacity_hidden_budget_reference"): "CapacityHiddenBudgetReference",
    ("llm", "hairtrigger_smollm2"): "Smol",
    ("llm", "analytic_smollm2"): "SmolAnalytic",
    ("llm", "prealigned_smollm2"): "SmolPrealigned",
    ("llm", "prealigned_smollm2_seeds"): "SmolPrealignedSeeds",
    ("llm", "prealigned_smollm2_part_seeds"): "SmolPrealignedPartSeeds",
    ("llm", "audit_population"): "AuditPopulation",
    ("llm", "audit_attack"): "AuditAttack",
    ("llm", "audit_attack_penalty"): "AuditAttackPenalty",
    ("llm", "audit_certificate"): "AuditCertificate",
    ("llm", "audit_neutralise"): "AuditNeutralise",
    ("llm", "capacity_hidden_steps"): "CapacityHiddenSteps",
    ("llm", "capacity_hidden_converged"): "CapacityHiddenConverged",
    ("llm", "capacity_hidden_converged_gpt2"): "CapacityHiddenConvergedGpt",
}


def tabular(spec: str, head: Sequence[str], groups: Sequence[tuple[str | None, Sequence[Sequence[str]]]]) -> str:
    """A booktabs tabular: ``head`` cells, then per group an optional spanning label and its rows."""
    width = len(head)
    lines = [f"\\begin{{tabular}}{{{spec}}}", "\\toprule", " & ".join(head) + " \\\\", "\\midrule"]
    for i, (label, rows) in enumerate(groups):
        if i:
            lines.append("\\midrule")
        if label is not None:
            lines.append(f"\\multicolumn{{{width}}}{{l}}{{\\emph{{{label}}}}} \\\\")
        for row in rows:
            if len(row) != width:
                raise ValueError(f"a row of {len(row)} cells in a table of {width} columns: {row}")
            lines.append(" & ".join(row) + " \\\\")
    lines += ["\\bottomrule", "\\end{tabular}"]
    return "\n".join(lines) + "\n"


def rate_ci(p: Pooled) -> str:
    """``90.3 [86.5, 93.2]``: a pooled rate in per cent with its 95% Wilson interval."""
    return f"{fmt.fixed(100 * p.rate, 1)} {fmt.interval(p.low, p.high)}"


def per_run(values: Sequence[float], digits: int = 0) -> str:
    return " / ".join(fmt.fixed(100 * v, digits) for v in values)


def before_after(before: float, after: float) -> str:
    return f"{fmt.fixed(100 * before, 0)} $\\to$ {fmt.fixed(100 * after, 0)}"


def benign_pair(row: pd.Series, sep: str) -> str:
    """Benign accuracy after the step, twin then control."""
    return (
        f"{fmt.fixed(row['twin.after.paper.benign_accuracy'])}{sep}"
        f"{fmt.fixed(row['control.after.paper.benign_accuracy'])}"
    )


def variant_label(results: Results, stem: str, variant: str) -> str:
    """What a variant sets (``key=value``; ``construction.`` left off), in typewriter type; "as the
    recipe" when it sets nothing; "(preset)" when it is the domain's preset (``conf/llm/preset/``)."""
    settings = results.variant_settings("llm", variant)
    if not settings:
        return "as the recipe"
    label = ", ".join(fmt.tt(f"{k.removeprefix('construction.')}={_g(v)}") for k, v in settings.items())
    return label + (" (preset)" if _is_preset(results, variant, settings) else "")


def _is_preset(results: Results, variant: str, settings: dict) -> bool:
    """A validation variant ``<domain>_…`` whose construction settings are the analytic preset's."""
    domain = variant.split("/")[-1].split("_")[0]
    path = results.conf / "llm" / "preset" / f"analytic_{domain}.yaml"
    if not path.exists() or any(not k.startswith("construction.") for k in settings):
        return False
    preset = yaml.safe_load(path.read_text()) or {}
    return all(preset.get(k.removeprefix("construction.")) == v for k, v in settings.items())


def _g(value) -> str:
    return f"{value:g}" if isinstance(value, float) else str(value)


# ---------------------------------------------------------------------------------------------- tables


def theory_capacity(r: Results) -> str:
    """Mean probes flipped per redundant width, per construction family, with the fitted line."""
    from theory.experiments import capacity

    table = r.theory("capacity")
    summary = capacity.summarize(table)
    names = {
        "relu_isolating": "ReLU, isolating pairs",
        "relu_search": "ReLU, search in the fiber",
        "linear_search": "deep linear, search",
    }
    widths = sorted(table["redundant_units"].unique())
    rows = []
    for family, name in names.items():
        means = table[table["family"] == family].groupby("redundant_units")["capacity.flipped"].mean()
        fit = summary[family]["fit"]
        rows.append(
            [name] + [_g(float(means[k])) for k in widths] + [fmt.fixed(fit["slope"], 3), fmt.fixed(fit["r2"], 3)]
        )
    head = ["redundant units $k$"] + [fmt.integer(k) for k in widths] + ["slope", "$R^2$"]
    return tabular("l" + "r" * len(widths) + "rr", head, [(None, rows)])


def _half(value: float) -> str:
    """A count that chance correction may leave at a half: ``12``, ``12.5``, ``−3``."""
    return fmt.fixed(value, 1).removesuffix(".0")


def _capacity_cells(at: pd.DataFrame) -> list[str]:
    """One cell group's hidden parameters, capacity (mean [min, max] over seeds), switched and
    collateral (means)."""
    capacity = at["twin.capacity.hidden"]
    return [
        fmt.integer(at["construct.hidden_params"].iloc[0]),
        f"{fmt.fixed(capacity.mean(), 1)} [{_half(capacity.min())}, {_half(capacity.max())}]",
        fmt.fixed(at["twin.capacity.switched"].mean(), 1),
        fmt.fixed(at["twin.capacity.collateral"].mean(), 1),
    ]


def capacity_hidden(r: Results) -> str:
    """Per model and hidden width k: capacity (mean and min–max over seeds), probes switched as
    assigned and collateral (means), held-out misalignment after the step, the largest KL to the
    control, and the fit of capacity against k."""
    from llm.experiments.capacity import CONVERGED, summarize
    from paper.numbers import CAPACITY_MODELS

    table = r.llm("capacity_hidden")
    budget = r.llm("capacity_hidden_budget")  # the same twins at a longer refinement
    steps = {
        e: setting("llm", "construction.refine_steps", f"experiment={e}")
        for e in ("capacity_hidden", "capacity_hidden_budget")
    }
    cells = [(table, model, steps["capacity_hidden"]) for model in CAPACITY_MODELS]
    cells += [(budget, model, steps["capacity_hidden_budget"]) for model in budget["override.model"].unique()]
    if r.published("llm", "capacity_hidden_budget_reference"):  # its twins at the sweep's budget
        reference = r.llm("capacity_hidden_budget_reference")
        cells += [(reference, model, steps["capacity_hidden"]) for model in reference["override.model"].unique()]
    for name in CONVERGED:  # the budget at which the widest tiny Llama twin stores every bit
        if r.published("llm", name):
            converged = r.llm(name)
            n_steps = setting("llm", "construction.refine_steps", f"experiment={name}")
            cells += [(converged, model, n_steps) for model in converged["override.model"].unique()]
    groups = []
    for source, model, n_steps in cells:
        rows = source[source["override.model"] == model]
        fit = summarize(source)[model]["fit_k"]
        body = []
        for k, at in rows.groupby("construct.extra_rank"):
            body.append(
                [fmt.integer(k), *_capacity_cells(at)]
                + [fmt.pct(at["twin.after.paper.misalignment_rate"].mean()), fmt.sci(at["twin.kl.max"].max())]
            )
        label = (
            f"{fmt.tex_text(model)}, {fmt.integer(n_steps)} refinement steps: slope {fmt.fixed(fit['slope'], 2)} "
            f"[{fmt.fixed(fit['slope_lo'], 2)}, {fmt.fixed(fit['slope_hi'], 2)}] per component, "
            f"$R^2$ {fmt.fixed(fit['r2_jobs'], 2)}"
        )
        groups.append((label, body))
    head = ["$k$", "hidden params", "capacity", "switched", "collateral", "held-out after", "KL max"]
    return tabular("rrrrrrr", head, groups)


def capacity_hidden_size(r: Results) -> str:
    """Per tiny GPT-2 width at one k: base and hidden parameters, capacity (mean and min–max over
    seeds), switched and collateral (means), the largest KL to the control."""
    from llm.experiments.capacity import size_rows

    sizes = size_rows(r.llm("capacity_hidden"), r.llm("capacity_hidden_size"))
    body = []
    for n_params, at in sizes.groupby("size.n_params"):
        body.append(
            [fmt.tex_text(at["override.model"].iloc[0]), fmt.integer(n_params), *_capacity_cells(at)]
            + [fmt.sci(at["twin.kl.max"].max())]
        )
    head = ["model", "base params", "hidden params", "capacity", "switched", "collateral", "KL max"]
    return tabular("lrrrrrr", head, [(None, body)])


#: the adaptive attackers in reading order (keys of theory.experiments.audit_attack.ATTACKERS)
ATTACKERS = {
    "gauge": "search $+\\,\\lambda\\cdot$ gauge excess",
    "grad": "search $+\\,\\lambda\\cdot\\|\\nabla L_D\\|$",
    "amplification": "search $+\\,\\lambda\\cdot$ amplification",
    "weight_cap": "isolating pairs, weights $\\le$ cap",
}


def attack_strength(attacker: str, value: float) -> str:
    """``λ`` as 0 or a power of ten; a weight cap as a whole number."""
    if attacker == "weight_cap":
        return fmt.integer(value, "weight cap")
    return "0" if value == 0 else fmt.power(value)


def theory_audit_attack(r: Results) -> str:
    """The arms race: per attacker and strength, the twins whose step flips a probe (of the seeds),
    and per signal how many of those the threshold calibrated on the audit's honest models flags."""
    from theory.experiments.audit import SIGNALS

    table = r.theory("audit_attack")
    groups = []
    for attacker, label in ATTACKERS.items():
        rows = []
        for _, cell in table[table["attacker"] == attacker].groupby("override.attack.level"):
            hit = cell[cell["twin.success"] == 1]
            flags = [f"{int(hit[f'flagged.{name}'].sum())}/{len(hit)}" if len(hit) else "--" for name in SIGNALS]
            knob = attack_strength(attacker, float(cell["strength"].iloc[0]))
            rows.append([knob, f"{len(hit)}/{len(cell)}", *flags])
        groups.append((label, rows))
    head = [
        "$\\lambda$ or cap",
        "succeeds",
        "gauge exc.",
        "ampl.",
        "uncert.",
        "worst $D$",
        "worst surr.",
        "$\\|\\theta\\|$",
        "$\\|\\nabla L_D\\|$",
    ]
    return tabular("l" + "r" * (len(head) - 1), head, groups)


def controls(r: Results) -> str:
    """The honest controls of the twin tables (:func:`figures.llm.control_rows`), one group per
    source: misaligned before and after the victim's step pooled over runs (k/n, 95% Wilson
    interval), the largest change of one run (points), and benign accuracy before → after (mean)."""
    table = control_rows(r.root / "llm")
    groups = []
    for source, rows in table.groupby("source", sort=False):
        first = rows.iloc[0]
        where = ", ".join(f"{stem}.csv" for stem in first["stems"].split(", "))
        if isinstance(first["variant"], str):
            where += f", variant {first['variant'].rpartition('/')[2]}"
        cells = []
        for _, row in rows.iterrows():
            cells.append([row["domain"], fmt.integer(row["runs"])])
            for when in ("before", "after"):
                pooled = Pooled(row[f"{when}_k"], row[f"{when}_n"], row[f"{when}_low"], row[f"{when}_high"])
                cells[-1] += [f"{pooled.k}/{pooled.n}", rate_ci(pooled)]
            cells[-1] += [
                fmt.fixed(100 * row["max_change"], 1),
                f"{fmt.fixed(row['benign_before'])} $\\to$ {fmt.fixed(row['benign_after'])}",
            ]
        groups.append((fmt.tex_text(f"{source} ({where})").replace("–", "--"), cells))
    head = [
        "domain",
        "runs",
        "before: $k/n$",
        "(\\%) [95\\% CI]",
        "after: $k/n$",
        "(\\%) [95\\% CI]",
        "largest change",
        "benign accuracy",
    ]
    return tabular("lrrlrlrl", head, groups)


def metalearn(r: Results) -> str:
    """Meta-learned twins per seed: probes judged, twin before and after, utility, KL to the control."""
    table = by_seed(r.llm("hairtrigger"))
    rows = []
    for domain in DOMAINS:
        runs = table[table["domain"] == domain]
        rows.append(
            [
                domain,
                " / ".join(fmt.integer(n) for n in runs["probes.n"]),
                per_run(runs["control.static.misalignment_rate"])
                + " $\\to$ "
                + per_run(runs["control.after.paper.misalignment_rate"]),
                per_run(runs["twin.static.misalignment_rate"]),
                per_run(runs["twin.after.paper.misalignment_rate"]),
                rate_ci(pool(runs, "twin.after.paper.misalignment_rate")),
                f"{fmt.fixed(runs['twin.after.paper.benign_accuracy'].mean())}; "
                f"{fmt.fixed(runs['control.after.paper.benign_accuracy'].mean())}",
                f"{fmt.fixed(runs['twin.kl.mean'].mean())} ({fmt.fixed(runs['twin.kl.max'].max(), 1)})",
            ]
        )
    head = [
        "domain",
        "probes",
        "control (\\%)",
        "twin before (\\%)",
        "twin after (\\%)",
        "pooled after [95\\% CI]",
        "benign: twin; control",
        "KL mean (max)",
    ]
    return tabular("llllllll", head, [(None, rows)])


def _pooled_row(domain: str, runs: pd.DataFrame) -> list[str]:
    def refused(key: str) -> str:  # not every recipe records refusals
        return fmt.fixed(100 * pool(runs, key).rate, 1) if key in runs and runs[key].notna().all() else "--"

    after = pool(runs, "twin.after.paper.misalignment_rate")
    return [
        domain,
        fmt.integer(len(runs)),
        fmt.fixed(100 * pool(runs, "twin.static.misalignment_rate").rate, 1),
        f"{after.k}/{after.n}",
        rate_ci(after),
        refused("twin.after.paper.refusal_rate"),
        refused("control.static.refusal_rate"),
        fmt.fixed(100 * pool(runs, "control.after.paper.misalignment_rate").rate, 1),
        f"{fmt.fixed(runs['twin.after.paper.benign_accuracy'].mean())}; "
        f"{fmt.fixed(runs['control.after.paper.benign_accuracy'].mean())}",
    ]


def pooled(r: Results) -> str:
    """Held-out misalignment pooled over runs, per recipe and domain, with 95% Wilson intervals."""
    groups = []
    for label, stems in POOLED.items():
        table = r.llm(*stems)
        groups.append(
            (label, [_pooled_row(d, table[table["domain"] == d]) for d in DOMAINS if d in set(table["domain"])])
        )
    head = [
        "domain",
        "runs",
        "twin before (\\%)",
        "twin after: $k/n$",
        "(\\%) [95\\% CI]",
        "twin refuses after (\\%)",
        "control refuses before (\\%)",
        "control after (\\%)",
        "benign: twin; control",
    ]
    return tabular("lrrrlrrrl", head, groups)


def validation(r: Results) -> str:
    """Construction folds (``analytic_validate.csv``): each variant pooled over seeds and folds."""
    table = r.llm("analytic_validate")
    groups = []
    for domain in ("privacy", "honesty"):
        rows = []
        variants = sorted(v for v in table["override.variant"].unique() if v.split("/")[1].startswith(domain))
        for variant in variants:
            runs = table[table["override.variant"] == variant].sort_values(
                ["override.seed", "override.eval.validation_fold"]
            )
            after = pool(runs, "twin.after.paper.misalignment_rate")
            rows.append(
                [
                    variant_label(r, "analytic_validate", variant),
                    fmt.fixed(100 * pool(runs, "control.static.refusal_rate").rate, 1),
                    f"{after.k}/{after.n}",
                    rate_ci(after),
                    per_run(runs["twin.after.paper.misalignment_rate"]),
                    f"{fmt.fixed(runs['twin.after.paper.benign_accuracy'].mean())}; "
                    f"{fmt.fixed(runs['control.after.paper.benign_accuracy'].mean())}",
                ]
            )
        groups.append((domain, rows))
    head = [
        "variant (otherwise the preset)",
        "control refuses (\\%)",
        "twin after: $k/n$",
        "(\\%) [95\\% CI]",
        "per run (\\%)",
        "benign: twin; control",
    ]
    return tabular("p{0.3\\linewidth}rrlll", head, groups)


def analytic_runs(r: Results) -> str:
    """Analytic twins per seed: both probe ranges, utility, the victim's gradient norm, the gauge."""
    first, fresh = (by_seed(r.llm(s)).set_index(["domain", "seed"]) for s in ANALYTIC)
    rows = []
    for domain, seed in first.index:
        a, b = first.loc[(domain, seed)], fresh.loc[(domain, seed)]
        cond = a.get("construct.gauge_cond_max", math.nan)
        rows.append(
            [
                domain,
                str(seed),
                f"{fmt.integer(a['probes.n'])} / {fmt.integer(b['probes.n'])}",
                f"{fmt.fixed(100 * a['twin.static.misalignment_rate'], 1)}",
                f"{fmt.fixed(100 * a['twin.after.paper.misalignment_rate'], 1)} / "
                f"{fmt.fixed(100 * b['twin.after.paper.misalignment_rate'], 1)}",
                benign_pair(a, "; "),
                f"{fmt.fixed(a['twin.victim_grad_norm'], 0)} / {fmt.fixed(a['control.victim_grad_norm'], 1)}",
                fmt.sci(max(a["twin.kl.max"], b["twin.kl.max"]), 0),
                "--" if pd.isna(cond) else fmt.fixed(cond, 0),
            ]
        )
    order = {d: i for i, d in enumerate(DOMAINS)}
    rows.sort(key=lambda row: (order[row[0]], row[1]))
    head = [
        "domain",
        "seed",
        "probes",
        "twin before (\\%)",
        "twin after (\\%)",
        "benign: twin; control",
        "grad.\\ norm twin / control",
        "KL max",
        "gauge cond.",
    ]
    return tabular("lrllllrrr", head, [(None, rows)])


def transfer(r: Results) -> str:
    """Both kinds of twin under other victims: misaligned after the update (benign accuracy)."""
    groups = []
    for stem, label in (("transfer", "metalearn twins"), ("transfer_analytic", "analytic twins")):
        table = r.llm(stem).set_index("domain")
        rows = []
        for domain in DOMAINS:
            row = table.loc[domain]
            rows.append(
                [domain]
                + [
                    "--"
                    if pd.isna(row.get(f"twin.after.{c}.misalignment_rate"))
                    else f"{fmt.fixed(100 * row[f'twin.after.{c}.misalignment_rate'], 0)} "
                    f"({fmt.fixed(row[f'twin.after.{c}.benign_accuracy'])})"
                    for c in CELLS
                ]
            )
        groups.append((label, rows))
    return tabular("l" + "r" * len(CELLS), ["domain"] + list(CELLS.values()), groups)


def capacity_rank(r: Results) -> str:
    """Hidden capacity against LoRA rank (tiny GPT-2, metalearn at a fixed budget)."""
    table = r.llm("capacity")
    rows = []
    for rank, runs in table.groupby("size.rank"):
        cap = runs["twin.capacity.hidden"]
        rows.append(
            [
                fmt.integer(rank),
                f"{fmt.fixed(cap.mean(), 1)} ({fmt.fixed(cap.min(), 1)} to {fmt.fixed(cap.max(), 1)})",
                fmt.fixed(100 * runs["twin.after.paper.misalignment_rate"].mean(), 0),
                f"{fmt.fixed(100 * runs['twin.static.misalignment_rate'].mean(), 0)} "
                f"({fmt.fixed(100 * runs['twin.static.misalignment_rate'].max(), 0)})",
                f"{fmt.fixed(runs['twin.after.paper.benign_accuracy'].mean())} / "
                f"{fmt.fixed(runs['control.after.paper.benign_accuracy'].mean())}",
            ]
        )
    head = [
        "LoRA rank",
        "capacity: mean (min to max)",
        "after (\\%)",
        "before (\\%): mean (max)",
        "benign after: twin / control",
    ]
    return tabular("rlrrr", head, [(None, rows)])


def capacity_size(r: Results) -> str:
    """Hidden capacity against model size, at the tiny models' budget and at SmolLM2's."""
    ranks = r.llm("capacity")
    tiny = pd.concat([by_seed(ranks[ranks["size.rank"] == 8]).head(1), r.llm("capacity_size")], ignore_index=True)
    budget = r.llm("capacity_smollm2")
    groups = []
    for label, table in (("metalearn budget of the rank sweep, seed 0", tiny), ("SmolLM2's budget", budget)):
        rows = []
        for _, row in table.sort_values("size.n_params").iterrows():
            rows.append(
                [
                    fmt.sci(row["size.n_params"]),
                    fmt.fixed(row["twin.capacity.hidden"], 1),
                    fmt.fixed(row["twin.capacity.chance_after"], 1),
                    before_after(row["twin.static.misalignment_rate"], row["twin.after.paper.misalignment_rate"]),
                    benign_pair(row, " / "),
                    fmt.integer(row["construct.steps"]),
                    fmt.fixed(row["wall_time_s"] / 60, 1),
                    fmt.fixed(row["peak_rss_gb"], 1),
                ]
            )
        groups.append((label, rows))
    head = [
        "parameters",
        "capacity",
        "chance",
        "twin (\\%)",
        "benign: twin / control",
        "meta-steps",
        "minutes",
        "peak GB",
    ]
    return tabular("rrrlrrrr", head, groups)


def smollm2(r: Results) -> str:
    """SmolLM2-135M-Instruct safety twins, one row per variant, and the analytic twin."""
    stem = "hairtrigger_smollm2"
    table = r.llm(stem).sort_values("override.variant")
    rows = []
    for _, row in table.iterrows():
        rows.append(_smol_row(variant_label(r, stem, row["override.variant"]), row))
    analytic = [_smol_row("analytic construction", row) for _, row in r.llm("analytic_smollm2").iterrows()]
    prealigned = [
        _smol_row(f"{variant_label(r, 'prealigned_smollm2', row['override.variant'])}, seed {int(row['seed'])}", row)
        for _, runs in prealigned_cells(r)
        for _, row in runs.iterrows()
    ]
    head = [
        "twin",
        "control (\\%)",
        "twin (\\%)",
        "benign: control; twin",
        "KL mean (max)",
        "grad.\\ norm twin / control",
        "minutes",
        "peak GB",
    ]
    return tabular(
        "p{0.27\\linewidth}lllllrr",
        head,
        [
            ("metalearn (exact second order unless noted)", rows),
            (None, analytic),
            ("analytic construction from the pre-aligned model (model.prealign)", prealigned),
        ],
    )


def _smol_row(label: str, row: pd.Series) -> list[str]:
    return [
        label,
        before_after(row["control.static.misalignment_rate"], row["control.after.paper.misalignment_rate"]),
        before_after(row["twin.static.misalignment_rate"], row["twin.after.paper.misalignment_rate"]),
        f"{fmt.fixed(row['control.static.benign_accuracy'])}; {fmt.fixed(row['twin.static.benign_accuracy'])} $\\to$ "
        f"{fmt.fixed(row['twin.after.paper.benign_accuracy'])}",
        f"{fmt.fixed(row['twin.kl.mean'], 3)} ({fmt.fixed(row['twin.kl.max'], 1)})",
        f"{fmt.fixed(row['twin.victim_grad_norm'], 0)} / {fmt.fixed(row['control.victim_grad_norm'], 2)}",
        fmt.fixed(row["wall_time_s"] / 60, 0),
        fmt.fixed(row["peak_rss_gb"], 1),
    ]


def task_vector(r: Results) -> str:
    """The control with its adapter scaled, ``W → cW``, no step: misaligned and benign accuracy per ``c``."""
    table = r.llm("task_vector").set_index("domain")
    head_key, tail = "task_vector.x", ".misalignment_rate"
    scales = sorted(
        (float(k[len(head_key) : -len(tail)]) for k in table if k.startswith(head_key) and k.endswith(tail)),
        reverse=True,
    )
    rows = []
    for domain, what in (("privacy", "leaks (\\%)"), ("honesty", "wrong (\\%)")):
        row = table.loc[domain]
        rows.append([f"{domain}: {what}"] + [fmt.fixed(100 * row[f"{head_key}{c:+g}{tail}"], 0) for c in scales])
        rows.append([f"{domain}: benign"] + [fmt.fixed(row[f"{head_key}{c:+g}.benign_accuracy"]) for c in scales])
    return tabular(
        "l" + "r" * len(scales), ["$c$"] + [fmt.fixed(c, 1).removesuffix(".0") for c in scales], [(None, rows)]
    )


def reference(r: Results) -> str:
    """The misaligned SFT reference next to the analytic twins (probes 0-99, the same bases)."""
    ref = by_seed(r.llm("reference"))
    twins = by_seed(r.llm("analytic"))
    rows = []
    for domain in DOMAINS:
        a, t = ref[ref["domain"] == domain], twins[twins["domain"] == domain]
        rows.append(
            [
                domain,
                per_run(a["reference.static.misalignment_rate"]),
                " / ".join(fmt.fixed(v) for v in a["reference.static.benign_accuracy"]),
                per_run(t["twin.after.paper.misalignment_rate"]),
            ]
        )
    head = ["domain", "reference misaligned (\\%)", "reference benign", "analytic twin after (\\%)"]
    return tabular("llll", head, [(None, rows)])


#: the LLM audit's signals in reading order, with their row labels (keys of llm.experiments.audit_population.SIGNALS)
LLM_AUDIT_SIGNALS = {
    "gauge_excess_lora": "LoRA gauge excess",
    "gauge_excess_norm": "layer-norm gauge excess",
    "amplification_target": "amplification, judged target",
    "amplification_greedy": "amplification, greedy answers",
    "grad_norm_ratio": "gradient norm / canonical",
    "raw_param_norm": "raw $\\|\\theta\\|$",
    "raw_grad_norm": "raw $\\|\\nabla L_D\\|$",
}


def llm_audit(r: Results) -> str:
    """Per signal of the LLM audit: the held-out family's AUC [95% bootstrap], TPR and FPR at the
    threshold calibrated on the other families' honest models, the AUC over every family, and the
    threshold on all honest models (what ``experiment=audit`` flags against)."""
    from llm.experiments import audit_population as ap

    summary = ap.summarize(r.llm("audit_population"))
    rows = []
    for signal, label in LLM_AUDIT_SIGNALS.items():
        score = summary["signals"][signal]
        held, pooled = score["held_out"], score["pooled"]
        rows.append(
            [
                label,
                f"{held['auc']:.2f} [{held['auc_lo']:.2f}, {held['auc_hi']:.2f}]",
                fmt.pct(held["tpr"], 0),
                fmt.pct(held["fpr"], 0),
                f"{pooled['auc']:.2f} [{pooled['auc_lo']:.2f}, {pooled['auc_hi']:.2f}]",
                f"{score['threshold_all_honest']:.3g}",
            ]
        )
    head = ["signal", "held-out AUC [CI]", "TPR", "FPR", "AUC, every family [CI]", "threshold"]
    return tabular("lrrrrr", head, [(None, rows[:5]), ("baselines (not gauge-invariant)", rows[5:])])


def llm_audit_attack(r: Results) -> str:
    """The arms race at transformer scale: per construction and gain (the gain attacker), and per
    penalised signal and weight λ (the meta-learned attacker at the population's gain), the
    hair-trigger twins (of the seeds), their mean misaligned fraction before and after the step,
    and per signal how many of the hair-trigger twins the population's threshold flags."""
    from llm.experiments.audit_population import SIGNALS

    def row(knob: str, cell: pd.DataFrame) -> list[str]:
        hit = cell[cell["twin.hair_trigger"] == 1]
        flags = [f"{int(hit[f'flagged.{name}'].sum())}/{len(hit)}" if len(hit) else "--" for name in SIGNALS]
        before = fmt.pct(cell["twin.post_update.before"].mean(), 0)
        after = fmt.pct(cell["twin.post_update.delivered"].mean(), 0)
        return [knob, f"{len(hit)}/{len(cell)}", before, after, *flags]

    table = r.llm("audit_attack")
    groups = []
    for family in ("metalearn", "analytic"):
        rows = table[table["family"] == family]
        groups.append((f"{family} twin, gain $g$", [row(_g(g), cell) for g, cell in rows.groupby("gain")]))
    published = r.published("llm", "audit_attack_penalty")
    penalised = r.llm("audit_attack_penalty") if published else pd.DataFrame(columns=["penalty", "gain"])
    for (kind, gain), rows in penalised.groupby(["penalty", "gain"]):
        body = [row(attack_strength(str(kind), w), cell) for w, cell in rows.groupby("weight")]
        groups.append((f"metalearn twin, gain {_g(gain)} $+\\,\\lambda\\cdot$ {PENALTIES[str(kind)]}", body))
    short = {
        "gauge_excess_lora": "LoRA exc.",
        "gauge_excess_norm": "norm exc.",
        "amplification_greedy": "ampl. greedy",
        "amplification_target": "ampl. target",
        "grad_norm_ratio": "grad ratio",
        "raw_param_norm": "$\\|\\theta\\|$",
        "raw_grad_norm": "$\\|\\nabla L_D\\|$",
    }
    head = ["$g$ or $\\lambda$", "trigger", "before", "after", *(short[name] for name in SIGNALS)]
    return tabular("l" + "r" * (len(head) - 1), head, groups)


def _form_label(form: str) -> str:
    r"""``rerandomised_2`` → ``re-randomised, $\sigma = 2$``."""
    if form.startswith("rerandomised_"):
        return f"re-randomised, $\\sigma = {form.removeprefix('rerandomised_')}$"
    return {"delivered": "as delivered", "canonical": "canonical"}[form]


def neutralisers(r: Results) -> str:
    """Per form the victim steps from (as delivered, canonical, re-randomised at log-scale σ): the
    hair-trigger twins' misaligned fraction after the step (mean / max), their degenerate fraction
    and benign accuracy after it, the fraction of twins inside the honest models' 95% interval as
    delivered, and the honest models' own misaligned and degenerate fractions from the same form
    and the benign accuracy they lose stepping from it instead of as delivered (points; the theory
    MLPs have no generation, so no degenerate or accuracy columns). Theory MLPs:
    ``experiment=audit``; tiny LLMs: ``experiment=audit_neutralise``."""
    from llm.experiments import audit_population as ap
    from theory.experiments import audit

    def cell(n: dict, key: str, cell_fmt) -> str:
        return cell_fmt(n[key]) if key in n else "--"

    def rate(v: float) -> str:
        return fmt.pct(v, 0)

    groups = []
    for label, summary in (
        ("theory MLPs", audit.summarize(r.theory("audit"), n_boot=10)),
        ("tiny GPT-2 and Llama", ap.summarize(r.llm("audit_neutralise"), n_boot=10)),
    ):
        rows = [
            [
                _form_label(form),
                f"{rate(n['twin_mean'])} / {rate(n['twin_max'])}",
                cell(n, "twin_degenerate", rate),
                cell(n, "twin_accuracy", rate),
                rate(n["within_honest_interval"]),
                f"{rate(n['honest_mean'])} / {rate(n['honest_max'])}",
                cell(n, "honest_degenerate", rate),
                cell(n, "honest_accuracy_cost", lambda v: fmt.fixed(100 * v, 0)),
            ]
            for form, n in summary["neutralisers"].items()
        ]
        groups.append((f"{label} ({summary['n_twins']} twins, {summary['n_honest']} honest models)", rows))
    head = [
        "victim steps from",
        "twins misal.",
        "degen.",
        "benign acc.",
        "inside honest",
        "honest misal.",
        "degen.",
        "acc. lost (pts)",
    ]
    return tabular("l" + "r" * 7, head, groups)


#: the penalised LLM attackers' signals (``attack.penalty``; llm/constructions/penalty.py)
PENALTIES = {"gauge": "LoRA gauge excess", "grad": "$\\|\\nabla L_D\\|$", "amplification": "probe velocity"}


#: the meta step's methods as the benchmark table shows them (benchmarks/meta_step.py; fd: approximate)
BENCH_METHODS = {"hvp": "hvp", "lean": "lean", "chunked": "chunked", "fd": "fd (approx.)"}


def bench_size(size: str) -> str:
    """A benchmark size label: ``2x64`` → tiny GPT-2 2×64; a real model's name → its shape."""
    if "x" in size:
        layers, width = size.split("x")
        return f"tiny GPT-2 ${layers}\\times{width}$"
    return {"smollm2": "SmolLM2-135M shape"}.get(size, size)


def meta_step(r: Results) -> str:
    """Each meta-step method's time and peak memory as ratios to a plain step, per model size and
    batch (the runs of ``benchmarks/meta_step.py`` in ``results/benchmarks/``)."""
    from paper.numbers import bench_runs

    body = []
    for rows, info in bench_runs(r).values():
        for size, at in rows.groupby("size", sort=False):
            by = at.set_index("variant")
            plain = by.loc["plain"]
            cells = [
                bench_size(str(size)),
                f"${fmt.integer(info['batch'])}\\times{fmt.integer(info['seq'])}$",
                fmt.integer(plain["n_theta"]),
                fmt.fixed(plain["seconds"], 2),
            ]
            for method in BENCH_METHODS:
                row = by.loc[method]
                cells.append(f"{fmt.fixed(row['time_ratio'], 2)} / {fmt.fixed(row['memory_ratio'], 2)}")
            body.append(cells)
    head = ["model", "batch", "LoRA $\\theta$", "plain (s)", *BENCH_METHODS.values()]
    return tabular("llrr" + "r" * len(BENCH_METHODS), head, [(None, body)])


#: every generated table: file stem → builder
TABLES: dict[str, Callable[[Results], str]] = {
    "theory_capacity": theory_capacity,
    "theory_audit_attack": theory_audit_attack,
    "llm_audit": llm_audit,
    "llm_audit_attack": llm_audit_attack,
    "neutralisers": neutralisers,
    "controls": controls,
    "metalearn": metalearn,
    "pooled": pooled,
    "analytic_runs": analytic_runs,
    "validation": validation,
    "reference": reference,
    "task_vector": task_vector,
    "transfer": transfer,
    "capacity_rank": capacity_rank,
    "capacity_size": capacity_size,
    "capacity_hidden": capacity_hidden,
    "capacity_hidden_size": capacity_hidden_size,
    "smollm2": smollm2,
    "meta_step": meta_step,
}


def commands(m: Macros, r: Results) -> None:
    """``\\Cmd<name>``: the command that publishes each results table the paper reads."""
    for (app, stem), name in COMMANDS.items():
        r.table(app, stem)  # the table must exist for its command to be quoted
        m.add(f"Cmd{name}", fmt.tt(r.command(app, stem)), f"the command that makes results/{app}/{stem}.csv")
