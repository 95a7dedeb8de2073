// The supervisor <-> worker message vocabulary: round trips, and every malformed form refused.
#include "shared/ipc/worker_channel.hpp"

#include <catch2/catch.hpp>

#include "shared/ipc/fd_channel.hpp"

namespace wire = culvert::shared::ipc::worker_channel;
using namespace std::string_literals;

TEST_CASE("a data key survives encoding", "[ipc][worker_channel]") {
  wire::data_key key{.tunnel_id = 0x0102030405060708ULL, .key = {}};
  for (std::size_t i = 0; i < key.key.size(); ++i) key.key[i] = std::uint8_t(0xf0 + i);
  const auto message = wire::encode(key);
  REQUIRE(message.size() == 1 + 8 + wire::data_key_size);
  REQUIRE(message[0] == 'K');
  auto decoded = wire::decode_to_worker(message, false);
  REQUIRE(decoded);
  auto* back = std::get_if<wire::data_key>(&*decoded);
  REQUIRE(back);
  CHECK(back->tunnel_id == key.tunnel_id);
  CHECK(back->key == key.key);
}

TEST_CASE("a data key that is short, long or carries a descriptor is refused",
          "[ipc][worker_channel]") {
  const auto message = wire::encode(wire::data_key{});
  CHECK_FALSE(wire::decode_to_worker(message.substr(0, message.size() - 1), false));
  CHECK_FALSE(wire::decode_to_worker(message + "x", false));
  CHECK_FALSE(wire::decode_to_worker(message, true));
}

TEST_CASE("data connections name their kind and need a descriptor", "[ipc][worker_channel]") {
  for (const bool tls : {false, true}) {
    const auto message = wire::encode(wire::data_connection{tls, "127.0.0.1:4242"});
    CHECK(message == (tls ? "T"s : "D"s) + "127.0.0.1:4242");
    auto decoded = wire::decode_to_worker(message, true);
    REQUIRE(decoded);
    auto& connection = std::get<wire::data_connection>(*decoded);
    CHECK(connection.tls == tls);
    CHECK(connection.peer == "127.0.0.1:4242");
    CHECK_FALSE(wire::decode_to_worker(message, false));  // the socket went missing
  }
  // A peer text too long for one channel message is cut, never sent oversized.
  const auto long_peer = wire::encode(wire::data_connection{false, std::string(1000, 'a')});
  CHECK(long_peer.size() <= culvert::shared::ipc::max_channel_message);
}

TEST_CASE("the worker refuses what only the supervisor hears, and unknown kinds",
          "[ipc][worker_channel]") {
  CHECK_FALSE(wire::decode_to_worker("", false));
  CHECK_FALSE(wire::decode_to_worker("R", false));
  CHECK_FALSE(wire::decode_to_worker("C3", false));
  CHECK_FALSE(wire::decode_to_worker("Z", true));
}

TEST_CASE("ready and data connection counts round trip", "[ipc][worker_channel]") {
  auto ready = wire::decode_to_supervisor(wire::encode(wire::ready{}), false);
  REQUIRE(ready);
  CHECK(std::holds_alternative<wire::ready>(*ready));
  for (const std::uint16_t count : {0, 1, 4, 65535}) {
    const auto message = wire::encode(wire::data_connection_count{count});
    auto decoded = wire::decode_to_supervisor(message, false);
    REQUIRE(decoded);
    CHECK(std::get<wire::data_connection_count>(*decoded).count == count);
  }
}

TEST_CASE("malformed worker reports are refused, and told apart from unknown kinds",
          "[ipc][worker_channel]") {
  for (const char* bad : {"C", "C12x", "C99999999", "C-1", "C+1", "C 1", "R1", "RR"}) {
    INFO(bad);
    CHECK_FALSE(wire::decode_to_supervisor(bad, false));
    CHECK(wire::is_to_supervisor_kind(bad));
  }
  for (const char* unknown : {"", "Z", "K", "D1.2.3.4:5", "T"}) {
    INFO(unknown);
    CHECK_FALSE(wire::decode_to_supervisor(unknown, false));
    CHECK_FALSE(wire::is_to_supervisor_kind(unknown));
  }
  CHECK_FALSE(wire::decode_to_supervisor("R", true));  // workers never send descriptors
  CHECK_FALSE(wire::decode_to_supervisor("C1", true));
}

TEST_CASE("the worker's exit codes are the documented ones", "[ipc][worker_channel]") {
  CHECK(wire::exit_ok == 0);
  CHECK(wire::exit_fatal == 78);  // sysexits' EX_CONFIG; docs/architecture.md
}
