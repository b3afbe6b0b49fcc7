"""Search one's own images: a gallery index of one model's embeddings (`index`), exact and faiss
nearest-neighbour search (`knn`), and the page a person browses the results on (`html`).

`python -m mgn_tf.search` (mgn-search) is the command-line tool over this package.
"""

from mgn_tf.gallery.index import Gallery, GalleryError, Item, Match, SearchResult

__all__ = ["Gallery", "GalleryError", "Item", "Match", "SearchResult"]
