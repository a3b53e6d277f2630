"""The results tables beside a study: a database written by an earlier version of them stays usable."""
import sqlalchemy as sa

from search.retrain.results import FoldRun, open_results


def test_tables_of_an_earlier_schema_get_the_columns_added_since(tmp_path):
    url = f"sqlite:///{tmp_path / 'old.db'}"
    with sa.create_engine(url).begin() as db:  # fold_runs as it was before runs recorded their node
        db.execute(sa.text("CREATE TABLE fold_runs (id INTEGER PRIMARY KEY, study VARCHAR(512), config_key VARCHAR(40),"
                           " seed INTEGER, split VARCHAR(32), protocol VARCHAR(64), state VARCHAR(16))"))
        db.execute(sa.text("INSERT INTO fold_runs (study, config_key, seed, split, protocol, state) "
                           "VALUES ('old', 'k', 0, 'devel', 'folds=1 seed=0', 'COMPLETE')"))
    engine = open_results(url)
    assert "node" in {c["name"] for c in sa.inspect(engine).get_columns("fold_runs")}
    with engine.connect() as db:
        assert db.execute(sa.select(FoldRun.study, FoldRun.node)).all() == [("old", None)]
