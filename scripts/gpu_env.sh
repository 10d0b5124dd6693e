# Sourced by the GPU scripts on a lent machine. Its image holds torch, numpy, matplotlib, typer,
# rich, tqdm and safetensors but not pydantic, and nothing can be downloaded there; and a bare
# checkout on PYTHONPATH lacks sleepagent.tools and sleepagent.storage (setuptools maps the
# repository's tools/ and storage/ into the package at install). So: install the wheels carried in
# .whl/ and this checkout into /tmp/site, and work from /tmp/w, outside the checkout, so that
# `python3 -m sleepagent` imports the installed package. Before the call, here:
#
#   echo /.whl/ >> .git/info/exclude
#   python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
#       --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 -d .whl \
#       pydantic==2.14.4 pydantic_core==2.50.5 annotated-types==0.8.0 typing-inspection==0.4.5 typing_extensions==4.16.0
#
# and call the device tool with carry [".whl"]. Sets REPO (the checkout) and SA.
REPO=${REPO:-$PWD}
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site "$REPO"/.whl/*.whl \
    && python3 -m pip install -q --no-index --no-deps --no-build-isolation --no-cache-dir --upgrade --target /tmp/site "$REPO" \
    || { echo "gpu_env: install failed"; exit 1; }
export PYTHONPATH=/tmp/site
SA="python3 -m sleepagent"
mkdir -p /tmp/w && cd /tmp/w || exit 1
python3 -c "import pydantic, sleepagent.cli, sleepagent.train.study" || { echo "gpu_env: sleepagent does not import"; exit 1; }
echo "gpu_env: sleepagent installed in /tmp/site; working in /tmp/w"
