# `make lock` regenerates every lock file in requirements/ from its .in file, with hashes.
# dev.txt is resolved first (every role, the tests and the tools in one resolution, keeping
# the versions it already pins); each other role is then resolved under `-c dev.txt`, so a
# package has the same version in every lock; bench.txt (the benchmark's own virtualenv,
# whose pins conflict with dev.txt's) is resolved alone. `make lock UPGRADE=pkg` moves one package.
# Needs the dev .venv (scripts/setup), whose uv is the version pinned in dev.txt.

UV ?= .venv/bin/uv
COMPILE = $(UV) pip compile --quiet --generate-hashes --python-version 3.11 \
	--python-platform x86_64-manylinux_2_28 --override requirements/overrides.txt \
	--no-emit-package setuptools --no-emit-package pip \
	--custom-compile-command "make lock"
UPGRADE ?=

.PHONY: lock
lock:
	$(COMPILE) $(if $(UPGRADE),--upgrade-package $(UPGRADE)) requirements/dev.in -o requirements/dev.txt
	$(COMPILE) -c requirements/dev.txt requirements/api.in -o requirements/api.txt
	$(COMPILE) -c requirements/dev.txt requirements/worker.in requirements/worker-base.in \
		--no-emit-package tensorflow -o requirements/worker.txt
	$(COMPILE) -c requirements/dev.txt requirements/build.in -o requirements/build.txt
	$(COMPILE) -c requirements/dev.txt requirements/deploy-tools.in -o requirements/deploy-tools.txt
	$(COMPILE) $(if $(UPGRADE),--upgrade-package $(UPGRADE)) requirements/bench.in -o requirements/bench.txt
