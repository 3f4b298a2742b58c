"""Ratings and item files: both formats, ids kept as strings, and every bad input a one-line error naming the line."""

import numpy as np
import pytest

from quickstudy.data.ratings import check_known_items, read_items, read_ratings


def write(tmp_path, name, text):
    path = tmp_path / name
    path.write_text(text)
    return path


def test_csv_with_header_keeps_leading_zeros_and_timestamps(tmp_path):
    path = write(tmp_path, "r.csv", "user,item,rating,timestamp\nalice,0111161,9,1365000000\nbob,0068646,7,1365000100\n")
    r = read_ratings(path)
    assert r.item.tolist() == ["0111161", "0068646"]
    assert r.user.tolist() == ["alice", "bob"]
    assert r.rating.tolist() == [9.0, 7.0] and r.timestamp.tolist() == [1365000000, 1365000100]
    assert r.line.tolist() == [2, 3]


def test_dat_format_without_timestamps_and_blank_lines(tmp_path):
    r = read_ratings(write(tmp_path, "r.dat", "1::0111161::9\n\n1::0068646::7.5\n"))
    assert r.item.tolist() == ["0111161", "0068646"] and r.timestamp is None
    assert r.rating.tolist() == [9.0, 7.5] and r.line.tolist() == [1, 3]


@pytest.mark.parametrize("text, message", [
    ("user,item,rating\nme,0111161,11\n", "line 2: rating 11 is outside the scale 0..10"),
    ("user,item,rating\nme,0111161,-1\n", "line 2: rating -1 is outside the scale 0..10"),
    ("me,0111161,9\nme,0068646\n", "line 2: expected user,item,rating[,timestamp]"),
    ("me,0111161,9\nme,0068646,great\n", "line 2: rating 'great' is not a number"),
    ("me,0111161,9,1\nme,0068646,8,yesterday\n", "line 2: timestamp 'yesterday' is not an integer"),
    ("me,0111161,9\nme,0111161,8\n", "line 2: user 'me' already rated item '0111161' on line 1"),
    ("1::0111161::9::1\n1::0068646::9\n", "line 2: expected user::item::rating[::timestamp]"),
    ("", "no ratings (the file is empty)"),
    ("user,item,rating\n\n", "no ratings (the file is empty)"),
])
def test_bad_ratings_name_the_line(tmp_path, text, message):
    path = write(tmp_path, "r.csv", text)
    with pytest.raises(ValueError) as error:
        read_ratings(path)
    assert message in str(error.value) and str(path) in str(error.value)
    assert "\n" not in str(error.value)


def test_missing_file_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        read_ratings(tmp_path / "nope.csv")


def test_items_dat_title_year_and_genres(tmp_path):
    path = write(tmp_path, "movies.dat", "0095882::Police Academy 5: Assignment: Miami Beach (1988)::Comedy|Crime\n"
                                         "0000001::Carmencita (1894)::\n")
    items = read_items(path)
    assert items.ids.tolist() == ["0095882", "0000001"]
    assert items.titles[0] == "Police Academy 5: Assignment: Miami Beach (1988)"
    assert items.years.tolist() == [1988.0, 1894.0]
    assert items.genre_names == ("Comedy", "Crime")
    assert items.genres.tolist() == [[True, True], [False, False]]
    assert items.index_of(np.array(["0000001", "9999999", "0095882"])).tolist() == [1, -1, 0]


def test_items_csv_quoted_titles_and_missing_year(tmp_path):
    items = read_items(write(tmp_path, "items.csv", 'item,title,genres,year\n7,"Heat, 1995",Crime,\n8,Up,,2009\n'))
    assert items.titles.tolist() == ["Heat, 1995", "Up"]
    assert np.isnan(items.years[0]) and items.years[1] == 2009.0


def test_unknown_item_names_the_line(tmp_path):
    ratings = read_ratings(write(tmp_path, "r.csv", "me,0111161,9\nme,0000000,8\n"))
    items = read_items(write(tmp_path, "m.dat", "0111161::The Shawshank Redemption (1994)::Drama\n"))
    with pytest.raises(ValueError, match=r"r.csv, line 2: item '0000000' is not in the item catalogue"):
        check_known_items(ratings, items)


def test_movietweetings_counts_match_its_source_note():
    from quickstudy.data.movietweetings import find_movietweetings, load_movietweetings

    try:
        find_movietweetings("ratings.dat", download=False)
    except FileNotFoundError:
        pytest.skip("MovieTweetings is not in ../shared/data or $QUICKSTUDY_DATA")
    ratings, movies = load_movietweetings(download=False)
    assert len(ratings) == 100_000 and len(movies) == 10_506 and len(movies.genre_names) == 25
    assert len(np.unique(ratings.user)) == 16_554 and len(np.unique(ratings.item)) == 10_506
    counts = np.unique(ratings.user, return_counts=True)[1]
    assert (counts >= 10).sum() == 2_583 and (counts >= 20).sum() == 1_154
    assert ratings.item[0] == "1074638" and ratings.item[2] == "0104257"  # leading zero kept


def test_missing_movietweetings_lists_where_it_looked(tmp_path, monkeypatch):
    from quickstudy.data import paths
    from quickstudy.data.movietweetings import find_movietweetings

    monkeypatch.setenv("QUICKSTUDY_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(paths, "shared_data_dirs", lambda: [])
    monkeypatch.delenv("QUICKSTUDY_DATA", raising=False)
    with pytest.raises(FileNotFoundError, match="MovieTweetings file 'ratings.dat' not found. Looked in"):
        find_movietweetings("ratings.dat", root=tmp_path / "empty", download=False)
