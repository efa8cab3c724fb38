"""The corpora `gpt prepare` reads (`tritongpt.corpus`): the built-in ones and the plays' Markdown. Text, JSON Lines
and Parquet inputs are tested through the pipeline that reads them, in tests/test_prepare.py."""

from tritongpt.corpus import markdown_to_text, python_source_files, shakespeare_files


def test_markdown_plays():
    md = (
        "# Hamlet\n\n## ACT I\n\n_Enter BERNARDO and FRANCISCO, two sentinels_\n\n**BERNARDO**  \n"
        "Who's there?  \nNay, answer me: stand, and unfold yourself.\n\n\n**FRANCISCO**  \n"
        "*\\[Aside.\\]* Long live the king!\n"
    )
    assert markdown_to_text(md) == (
        "Hamlet\n\nACT I\n\nEnter BERNARDO and FRANCISCO, two sentinels\n\nBERNARDO:\nWho's there?\n"
        "Nay, answer me: stand, and unfold yourself.\n\nFRANCISCO:\n[Aside.] Long live the king!\n"
    )
    files = shakespeare_files()
    assert len(files) == 38 and files == sorted(files)
    assert all(f.suffix == ".md" for f in files)


def test_python_source_corpus():
    files = python_source_files()
    assert len(files) > 100 and files == sorted(files)
    assert any(f.name == "os.py" for f in files)
    assert not any("site-packages" in f.parts for f in files)
