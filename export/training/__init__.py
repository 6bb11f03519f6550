"""The torch side of edge-export: training the GRU head (`train`) and pretraining the backbone
(`pretrain`) on labelled clips (`clips`) through cached features (`feature_cache`), scoring a head
(`evaluate`, numpy only), and the `train`/`pretrain`/`evaluate` subcommands (`commands`).

torch (the optional `train` extra) is imported only by `torch_mobilenet.require_torch`, when a
command needs it: importing any module here works without it. Import from the modules."""
