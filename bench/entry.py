"""The entry's hand-tuned config, as its README gives it, on the synthetic data's feature sets.

The entry's README has one training command, for valence:

    python main.py --emo_dim_set valence --feature_set bert-4 --d_rnn 64 --rnn_n_layers 1 --rnn_bi --attn
        --n_layers 1 --n_heads 8 --epochs 100 --batch_size 1024 --lr 0.005 --seed 43 --n_seeds 1 --min_lr 1e-5
        --rnn_dr 0.0 --attn_dr 0.0 --out_dr 0.0 --win_len 200 --hop_len 100 --add_seg_id --log --gpu 6

Here bert-4 (text) becomes egemaps + fasttext, standardized with train statistics (eGeMAPS needs it).
For arousal the README gives only the template (`--emo_dim_set [arousal or valence]`), so the
arousal config is this one with the target swapped.
"""
from core.config import TrainConfig

ENTRY_VALENCE = TrainConfig(feature_set=("egemaps", "fasttext"), emo_dim_set=("valence",),
                            normalize=("egemaps", "fasttext"), add_seg_id=True, d_rnn=64, rnn_n_layers=1,
                            rnn_bi=True, n_layers=1, n_heads=8, win_len=200, hop_len=100, batch_size=1024,
                            lr=5e-3, min_lr=1e-5, seed=43)


def entry_config(target: str, feature_sets: tuple[str, ...] = ENTRY_VALENCE.feature_set) -> TrainConfig:
    """The entry's config for this target, on these feature sets (a data set without egemaps and fasttext)."""
    return ENTRY_VALENCE.replace(emo_dim_set=(target,), feature_set=feature_sets, normalize=feature_sets)
