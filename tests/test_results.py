"""The results tables beside a study: a database written by an earlier version of them stays usable."""
import sqlalchemy as sa

from search.retrain.results import FoldRun, looks, looks_at, open_results, record_look


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


def test_looks_at_one_test_set_are_counted_across_study_names(tmp_path):
    engine = open_results(f"sqlite:///{tmp_path / 'looks.db'}")
    record_look(engine, "tpe", "retrain-best", "set-a", log=lambda line: None)
    record_look(engine, "random", "retrain-best", "set-a", log=lambda line: None)
    record_look(engine, "other data", "retrain-best", "set-b", log=lambda line: None)
    assert looks_at(engine, "set-a") == 2 and looks_at(engine, "set-b") == 1
    assert looks(engine, "tpe") == 1  # each study still numbers its own looks
