#include "proxy/cancel_registry.h"

#include <gtest/gtest.h>

#include <set>

namespace pgcloak::proxy {
namespace {

TEST(CancelRegistryTest, MapsClientKeyToUpstreamKey) {
  CancelRegistry reg;
  BackendKey upstream{4242, 777};
  BackendKey client = reg.add(upstream);
  EXPECT_GT(client.process_id, 0);
  // The client must never see the upstream key.
  EXPECT_FALSE(client.process_id == upstream.process_id && client.secret_key == upstream.secret_key);
  auto found = reg.find(client);
  ASSERT_TRUE(found.has_value());
  EXPECT_EQ(found->process_id, 4242);
  EXPECT_EQ(found->secret_key, 777);
}

TEST(CancelRegistryTest, WrongSecretOrUnknownPidFindsNothing) {
  CancelRegistry reg;
  BackendKey client = reg.add({1, 2});
  EXPECT_FALSE(reg.find({client.process_id, client.secret_key + 1}).has_value());
  EXPECT_FALSE(reg.find({client.process_id ^ 0x40000000, client.secret_key}).has_value());
}

TEST(CancelRegistryTest, RemoveNeedsTheRightSecret) {
  CancelRegistry reg;
  BackendKey client = reg.add({1, 2});
  reg.remove({client.process_id, client.secret_key + 1});
  EXPECT_TRUE(reg.find(client).has_value());
  reg.remove(client);
  EXPECT_FALSE(reg.find(client).has_value());
  EXPECT_EQ(reg.size(), 0U);
}

TEST(CancelRegistryTest, KeysAreUniqueAndRandom) {
  CancelRegistry reg;
  std::set<int32_t> pids;
  std::set<int32_t> secrets;
  for (int i = 0; i < 2000; ++i) {
    BackendKey k = reg.add({i, i});
    EXPECT_TRUE(pids.insert(k.process_id).second);
    secrets.insert(k.secret_key);
  }
  EXPECT_EQ(reg.size(), 2000U);
  // 2000 draws from 2^32: a collision or two is possible, a pattern is not.
  EXPECT_GT(secrets.size(), 1990U);
}

}  // namespace
}  // namespace pgcloak::proxy
