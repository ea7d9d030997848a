import pytest

from edgecache.oci.routes import ROUTE_KINDS, Route, parse_v2_path

D = "sha256:" + "b" * 64


@pytest.mark.parametrize(
    ("path", "expected"),
    [
        ("/v2", Route("base")),
        ("/v2/", Route("base")),
        ("/v2/_catalog", Route("catalog")),
        ("/v2/library/nginx/tags/list", Route("tags", "library/nginx")),
        ("/v2/nginx/manifests/latest", Route("manifest", "nginx", "latest")),
        ("/v2/a/b/c/manifests/" + D, Route("manifest", "a/b/c", D)),
        ("/v2/nginx/blobs/" + D, Route("blob", "nginx", D)),
        ("/v2/nginx/blobs/not-a-digest", Route("blob", "nginx", "not-a-digest")),
        ("/v2/nginx/blobs/uploads", Route("uploads", "nginx")),
        ("/v2/nginx/blobs/uploads/", Route("uploads", "nginx")),
        ("/v2/nginx/blobs/uploads/abc-123", Route("upload", "nginx", "abc-123")),
        ("/v2/nginx/referrers/" + D, Route("referrers", "nginx", D)),
        # Names containing route words are matched from the right.
        ("/v2/a/blobs/b/blobs/" + D, Route("blob", "a/blobs/b", D)),
        ("/v2/manifests/manifests/x", Route("manifest", "manifests", "x")),
        ("/v2/tags/list/tags/list", Route("tags", "tags/list")),
        ("/v2/x/blobs/uploads/blobs/uploads/", Route("uploads", "x/blobs/uploads")),
        ("/v2/x/blobs/uploads/blobs/uploads/id", Route("upload", "x/blobs/uploads", "id")),
        # Anything after blobs/uploads/ is an upload id (the server rejects ids it never minted).
        ("/v2/x/blobs/uploads/" + D, Route("upload", "x", D)),
        ("/v2/x/blobs/uploads/blobs/" + D, Route("blob", "x/blobs/uploads", D)),
        ("/v2/_catalog/tags/list", Route("tags", "_catalog")),
        ("/v2/referrers/referrers/" + D, Route("referrers", "referrers", D)),
        # Names are not validated here (the server answers NAME_INVALID).
        ("/v2/UPPER/tags/list", Route("tags", "UPPER")),
        ("/v2/a//b/tags/list", Route("tags", "a//b")),
    ],
)
def test_routes(path: str, expected: Route) -> None:
    route = parse_v2_path(path)
    assert route == expected
    assert route is not None and route.kind in ROUTE_KINDS


@pytest.mark.parametrize(
    "path",
    [
        "",
        "/",
        "/v1/",
        "/v2x",
        "/v22/",
        "/healthz",
        "/v2/nginx",
        "/v2/nginx/",
        "/v2/_catalog/",
        "/v2/tags/list",
        "/v2//tags/list",
        "/v2/manifests/latest",
        "/v2/nginx/manifests/",
        "/v2/nginx/manifests",
        "/v2/nginx/blobs/",
        "/v2/blobs/" + D,
        "/v2/blobs/uploads/",
        "/v2/nginx/tags/list/",
        "/v2/nginx/tags",
        "/v2/nginx/referrers/",
        "/v2/nginx/other/thing",
        "v2/nginx/tags/list",
    ],
)
def test_no_route(path: str) -> None:
    assert parse_v2_path(path) is None
