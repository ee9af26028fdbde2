"""An image through a real `costor serve` (issue 23): the API's tree lists it with its
type and facts (as the OpenAPI document says), the API's download and a byte range
serve its bytes, WebDAV shows and serves it as a file, and the web UI's page names its
type with ``ls -l``'s letter ``i``.

The client "vm" backs up one sparse image file (``images = [FILE]``), which is how a
VM's disk is usually kept; block devices take the same path once read.
"""

from __future__ import annotations

import random
import re
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import quote
from xml.etree import ElementTree

import httpx
import pytest
from serving import ENV, start_serve, stop_serve
from support.fixtures import Site
from support.inventory import client_table, local_tables, write_tables
from ui_site import Page

PASSWORD = ENV["COSTOR_TEST_USER_PASSWORD"]
USERS = """
[groups.admins]
roles = ["admin"]

[users.ada]
groups = ["admins"]
password = { env = "COSTOR_TEST_USER_PASSWORD" }
"""
MIB = 1024 * 1024
IMAGE_SIZE = 12 * MIB


class Served:
    def __init__(self, site: Site, base_url: str, image: Path, token: str) -> None:
        self.site = site
        self.image = image
        self.http = httpx.Client(
            base_url=base_url, timeout=60, headers={"Authorization": f"Bearer {token}"}
        )


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    root = tmp_path_factory.mktemp("image-served")
    image = root / "vm1.img"
    with open(image, "wb") as disk:  # data, a hole of 4 MiB, data, a hole at the end
        disk.write(random.Random(7).randbytes(4 * MIB))
        disk.seek(8 * MIB)
        disk.write(random.Random(8).randbytes(2 * MIB))
        disk.truncate(IMAGE_SIZE)
    tables = [*local_tables({}), client_table("vm", [], f'images = ["{image}"]')]
    site = Site(root, write_tables(root, *tables, USERS), root / "pool")
    with pytest.MonkeyPatch.context() as patch:
        for key, value in ENV.items():
            patch.setenv(key, value)
        assert site.cli("apply", "--auto-approve").code == 0
        result = site.cli("backup", "vm")
        assert result.code == 0, result.stderr
        token = site.cli("token", "create", "--user", "ada", "--scope", "admin")
        assert token.code == 0, token.stderr
        process, base_url = start_serve(site)
    served = Served(site, base_url, image, token.stdout.strip())
    try:
        yield served
    finally:
        served.http.close()
        stop_serve(process)


def test_the_tree_lists_an_image_with_its_facts(served: Served) -> None:
    answer = served.http.get(
        "/api/v1/snapshots/vm:latest/tree", params={"path": str(served.image), "depth": 0}
    )
    assert answer.status_code == 200, answer.text
    [entry] = answer.json()
    assert entry["type"] == "image" and entry["size"] == IMAGE_SIZE
    assert entry["image"]["method"] == "full"
    assert entry["image"]["source"] == "file"
    assert "target" not in entry


def test_the_api_serves_an_image_whole_and_by_range(served: Served) -> None:
    expected = served.image.read_bytes()
    url = "/api/v1/snapshots/vm:latest/file"
    whole = served.http.get(url, params={"path": str(served.image)})
    assert whole.status_code == 200, whole.text
    assert whole.content == expected
    part = served.http.get(
        url,
        params={"path": str(served.image)},
        headers={"Range": f"bytes={4 * MIB - 10}-{4 * MIB + 9}"},
    )
    assert part.status_code == 206
    assert part.content == expected[4 * MIB - 10 : 4 * MIB + 10]


def test_webdav_shows_and_serves_an_image_as_a_file(served: Served) -> None:
    path = "/dav/vm/latest" + quote(str(served.image))
    listed = served.http.request("PROPFIND", path, headers={"Depth": "0"}, auth=("ada", PASSWORD))
    assert listed.status_code == 207, listed.text
    found = ElementTree.fromstring(listed.content)
    assert found.findtext(".//{DAV:}getcontentlength") == str(IMAGE_SIZE)
    assert found.find(".//{DAV:}resourcetype/{DAV:}collection") is None  # a file
    fetched = served.http.get(path, auth=("ada", PASSWORD))
    assert fetched.status_code == 200
    assert fetched.content == served.image.read_bytes()


def test_the_web_ui_page_names_the_image_type(served: Served) -> None:
    page = Page(str(served.http.base_url))
    page.log_in("ada")
    snapshot = served.site.cli("snapshots", "--json").json()[0]["id"]
    details = page.get(f"/snapshots/{snapshot}/file", params={"path": str(served.image)})
    assert details.status_code == 200, details.text
    assert 'data-testid="file-type">image<' in details.text
    assert "irw-r--r--" in details.text
    download = re.search(r'id="download-file" href="([^"]+)"', details.text)
    assert download is not None
