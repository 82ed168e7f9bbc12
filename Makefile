# Two commands do everything on a fresh machine:
#   make demo   install into .venv/ and run the built-in demo (synth -> prepare -> ... -> predict)
#   make test   install into .venv/ and run the whole test suite (offline)
SHELL := /bin/bash
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.pneumoseg-installed
export HF_HUB_OFFLINE := 1
export NO_ALBUMENTATIONS_UPDATE := 1

.PHONY: install ohif demo test fuzz bench lint clean

# OHIF's prebuilt viewer (npm @ohif/app, its dist/ folder) for `pneumoseg pacs-demo` and the OHIF browser test,
# pinned by version and sha512 (npm's integrity of the tarball); skipped, with a reason, without npm or the registry.
OHIF_VERSION := 3.13.2
OHIF_SHA512 := WZdxmpmG7rqFgW9ZJLcbgr3XCtLi1KDNPoMaeY5PPe6j4G4fjEjjkycZM6C6Zk2F87BKxFfpq+jd5xXZB9E8EA==
OHIF_DIR := .ohif

$(STAMP): pyproject.toml
	# Debian's Chromium + ChromeDriver for the viewer's browser test (skipped, with a reason, where
	# they cannot be installed: not root, or no apt).
	command -v chromium >/dev/null && command -v chromedriver >/dev/null || \
	  { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null && \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver >/dev/null; } || \
	  echo "note: chromium not installed; the browser test will be skipped"
	# Debian's Orthanc + DICOMweb plugin for the PACS round-trip test (skipped, with a reason, where
	# they cannot be installed: not root, or no apt).
	command -v Orthanc >/dev/null && test -e /usr/share/orthanc/plugins/libOrthancDicomWeb.so || \
	  { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null && \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq orthanc orthanc-dicomweb >/dev/null; } || \
	  echo "note: orthanc not installed; the PACS round-trip test will be skipped"
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	# torch first: smp and timm need torchvision, and the pair must match.
	$(PY) -m pip install -q "torch>=2.3,<=2.14.1" "torchvision>=0.18,<=0.29.1"
	$(PY) -m pip install -q -e ".[test]"
	touch $@

install: $(STAMP) ohif

ohif: $(OHIF_DIR)/dist/index.html

$(OHIF_DIR)/dist/index.html:
	@command -v npm >/dev/null || { echo "note: npm not found; OHIF not installed (pacs-demo and the OHIF test need it)"; exit 0; }; \
	  set -e; rm -rf $(OHIF_DIR)/tmp; mkdir -p $(OHIF_DIR)/tmp; \
	  if ! (cd $(OHIF_DIR)/tmp && npm pack -q @ohif/app@$(OHIF_VERSION) >/dev/null 2>&1); then \
	    echo "note: npm could not fetch @ohif/app@$(OHIF_VERSION); OHIF not installed (pacs-demo and the OHIF test need it)"; \
	    rm -rf $(OHIF_DIR)/tmp; exit 0; fi; \
	  got=$$(openssl dgst -sha512 -binary $(OHIF_DIR)/tmp/ohif-app-$(OHIF_VERSION).tgz | base64 -w0); \
	  if [ "$$got" != "$(OHIF_SHA512)" ]; then echo "error: @ohif/app@$(OHIF_VERSION) tarball sha512 $$got is not the pinned one"; \
	    rm -rf $(OHIF_DIR)/tmp; exit 1; fi; \
	  tar -xzf $(OHIF_DIR)/tmp/ohif-app-$(OHIF_VERSION).tgz -C $(OHIF_DIR)/tmp package/dist; \
	  rm -rf $(OHIF_DIR)/dist; mv $(OHIF_DIR)/tmp/package/dist $(OHIF_DIR)/dist; rm -rf $(OHIF_DIR)/tmp; \
	  echo "OHIF $(OHIF_VERSION) viewer in $(OHIF_DIR)/dist"

demo: install
	$(VENV)/bin/pneumoseg demo --out demo-out

test: install
	$(PY) -m pytest -q -p no:cacheprovider

# A longer fuzz run than the one in `make test`: mutated real DICOMs and hypothesis on the RLE codecs.
fuzz: install
	PNEUMOSEG_FUZZ_EXAMPLES=5000 PNEUMOSEG_FUZZ_SEED=1 PNEUMOSEG_FUZZ_SCALE=20 \
	  $(PY) -m pytest -q -p no:cacheprovider tests/io/dicom/test_fuzz_dicom.py tests/io/dicom/test_frame_size.py tests/io/test_rle_properties.py

bench: install
	$(PY) benchmarks/bench_data.py

lint: install
	$(PY) -m pip install -q "ruff>=0.5" "mypy>=1.10"
	$(VENV)/bin/ruff check pneumoseg tests benchmarks
	$(VENV)/bin/mypy pneumoseg --ignore-missing-imports

clean:
	rm -rf demo-out .pytest_cache
