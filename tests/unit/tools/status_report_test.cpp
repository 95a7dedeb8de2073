// Unit tests for culvert-status's report: the SPLICED share and where it appears (table and JSON),
// built from snapshots as the reader would return them; what the JSON leaves out; and the whole
// tool against a real segment that anyone could have written.
#include "tools/status/status_report.hpp"

#include <sys/stat.h>
#include <unistd.h>

#include <catch2/catch.hpp>
#include <cstring>
#include <sstream>
#include <string>

namespace {

namespace ipc = culvert::shared::ipc;
using culvert::tools::format_share;

ipc::slot_snapshot active_tunnel(std::uint64_t in, std::uint64_t out, std::uint64_t spliced) {
  ipc::slot_snapshot t;
  t.identity.state = ipc::slot_state::active;
  t.identity.kind = ipc::tunnel_kind::tcp;
  t.identity.public_port = 20001;
  t.identity.worker_pid = 4242;
  t.identity.created_unix_ms = 1'000;
  std::strcpy(t.identity.domain, "brave-otter-42.localhost");
  t.bytes_in = in;
  t.bytes_out = out;
  t.bytes_spliced = spliced;
  return t;
}

}  // namespace

TEST_CASE("the spliced share is a whole percentage that reaches 100% only for every byte",
          "[status]") {
  CHECK(format_share(0, 0) == "-");
  CHECK(format_share(0, 10) == "0%");
  CHECK(format_share(87, 100) == "87%");
  CHECK(format_share(999'999, 1'000'000) == "99%");  // rounded down, never up to 100%
  CHECK(format_share(1'000'000, 1'000'000) == "100%");
  CHECK(format_share(~0ULL - 1, ~0ULL) == "99%");  // no overflow at the top of the range
}

TEST_CASE("the status table and JSON show how much of a tunnel's traffic was spliced", "[status]") {
  ipc::table_header header;
  header.slot_count = 8;
  const std::vector<ipc::slot_snapshot> tunnels{active_tunnel(3 << 20, 1 << 20, 3 << 20)};
  const std::string table = culvert::tools::to_table(header, tunnels, 61'000, "default");
  INFO(table);
  CHECK(table.find("SPLICED\n") != std::string::npos);  // the last column
  CHECK(table.find("3.0 MiB  1.0 MiB      75%\n") != std::string::npos);
  const auto json = culvert::tools::to_json(header, tunnels, 61'000, "default");
  CHECK(json["tunnels"][0]["bytes_spliced"] == 3 << 20);
  CHECK(json["tunnels"][0]["bytes_in"] == 3 << 20);
}

TEST_CASE("the status JSON carries no tunnel id", "[status]") {
  // The segment is world-readable; an id names a tunnel to DATA_ROUTE and to INIT's reclaim.
  ipc::table_header header;
  header.slot_count = 8;
  const auto json = culvert::tools::to_json(header, {active_tunnel(1, 2, 0)}, 61'000, "default");
  REQUIRE(json["tunnels"].size() == 1);
  CHECK_FALSE(json["tunnels"][0].contains("tunnel_id"));
  CHECK(json["tunnels"][0]["domain"] == "brave-otter-42.localhost");
}

TEST_CASE("culvert-status refuses a table that group or others could have written", "[status]") {
  const std::string instance = "test-status-mode-" + std::to_string(::getpid());
  ipc::tunnel_table_owner owner(instance, 2, "example.com");
  culvert::tools::status_options options;
  options.instance = instance;
  {
    std::ostringstream out, err;
    CHECK(culvert::tools::run_status(options, out, err) == 0);
    CHECK(err.str().empty());
  }
  const auto path = ipc::segment_path(owner.name());
  REQUIRE(::chmod(path.c_str(), 0666) == 0);
  std::ostringstream out, err;
  CHECK(culvert::tools::run_status(options, out, err) == 1);
  CHECK(out.str().empty());
  CHECK_THAT(err.str(), Catch::Contains("culvert-status: shared-memory segment " + path) &&
                            Catch::Contains("mode 0666") &&
                            Catch::Contains("writable by group or others"));
}
