"""``anther-deploy``: a real Flower deployment (SuperLink + SuperNodes) with TLS and node
authentication, from one directory that holds its certificates, keys, logs and runs.

    anther-deploy init DIR --nodes 3 --host 192.168.1.10   # CA, SuperLink certificate, node keys
    anther-deploy superlink DIR                             # TLS + node auth; registers the node keys
    anther-deploy supernode DIR --node 0 --superlink 192.168.1.10:9093 [--data local.csv]
    anther-deploy run DIR rounds=2 model=tiny-bert          # submit the App, stream its log
    anther-deploy local DIR --nodes 3 rounds=2              # all of it on this machine, then stop
    anther-deploy stop DIR                                  # stop what was started from DIR here

Modules: :mod:`.layout` (what lives where in DIR), :mod:`.certs` (CA, certificates,
SSH-format node keys and their checks), :mod:`.procs` (Flower's processes: environment,
start detached, stop with every descendant), :mod:`.steps` (one function per command),
:mod:`.cli` (argument parsing).
"""
