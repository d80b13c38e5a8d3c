"""atr-proxy's filter for a plain mitmdump (or mitmproxy, mitmweb):

    mitmdump -s addons/atr_filter.py --set atr_config=atr.yaml

Needs the atr_proxy package importable (``pip install -e .``). ``atr-proxy proxy`` runs
the same addon with the listen address, the CA directory and the options set for you.
"""

from atr_proxy.proxy.addon import AtrFilter

addons = [AtrFilter()]
