// PolicyStore without a database: the loader is injected, the catalog is the
// hand-built shop catalog (tests/support/shop_policy.h).
#include "proxy/policy_store.h"

#include <gtest/gtest.h>

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <thread>

#include "tests/support/shop_policy.h"

namespace pgcloak::proxy {
namespace {

using namespace std::chrono_literals;

std::shared_ptr<const rules::MaskingConfig> shop_masking() {
  rules::SecretSources secrets;
  secrets.read_file = [](const std::string&) { return std::optional<std::string>(); };
  secrets.get_env = [](const std::string&) {
    return std::optional<std::string>("test-mask-key-test-mask-key-test-mask-key");
  };
  auto load = rules::parse_config(testing::shop_masking_yaml, secrets);
  EXPECT_TRUE(load.ok()) << load.format("shop");
  return std::make_shared<const rules::MaskingConfig>(load.config.masking);
}

// A loader whose next outcome the test decides; counts its calls.
struct FakeLoader {
  std::atomic<int> calls{0};
  std::atomic<bool> fail{false};
  PolicyStore::Loader loader() {
    return [this]() -> Result<std::shared_ptr<rules::Catalog>> {
      ++calls;
      if (fail) return Error::make(sqlstate::connection_failure, "cannot connect to PostgreSQL: refused");
      return testing::shop_catalog();
    };
  }
};

TEST(PolicyStoreTest, DisabledMaskingGivesEveryoneNoPolicy) {
  auto masking = std::make_shared<const rules::MaskingConfig>();
  FakeLoader fake;
  PolicyStore store(masking, 60s, fake.loader());
  EXPECT_FALSE(store.enabled());
  auto p = store.for_user("support");
  ASSERT_TRUE(p.ok());
  EXPECT_EQ(*p, nullptr);
}

TEST(PolicyStoreTest, FailsClosedUntilTheFirstLoad) {
  FakeLoader fake;
  PolicyStore store(shop_masking(), 60s, fake.loader());
  ASSERT_TRUE(store.enabled());
  auto before = store.for_user("support");
  ASSERT_FALSE(before.ok());
  EXPECT_EQ(before.error().sqlstate, sqlstate::cannot_connect_now);
  EXPECT_NE(before.error().message.find("the catalog has not loaded (the first load has not finished)"),
            std::string::npos)
      << before.error().message;

  fake.fail = true;
  EXPECT_FALSE(store.refresh().ok());
  auto failed = store.for_user("support");
  ASSERT_FALSE(failed.ok());
  EXPECT_NE(failed.error().message.find("the last attempt failed"), std::string::npos);
  // The client never sees where the catalog login connects.
  EXPECT_EQ(failed.error().message.find("refused"), std::string::npos);
  EXPECT_EQ(store.generation(), 0U);
  EXPECT_EQ(store.protection(), nullptr);

  fake.fail = false;
  ASSERT_TRUE(store.refresh().ok());
  EXPECT_EQ(store.generation(), 1U);
  auto after = store.for_user("analyst");
  ASSERT_TRUE(after.ok());
  ASSERT_NE(*after, nullptr);
  EXPECT_EQ((*after)->policy().name, "analytics");  // through bi_readers -> analytics_team
}

TEST(PolicyStoreTest, PoliciesAreCachedPerUserUntilTheProtectionChanges) {
  FakeLoader fake;
  PolicyStore store(shop_masking(), 60s, fake.loader());
  ASSERT_TRUE(store.refresh().ok());
  auto a1 = store.for_user("support");
  auto a2 = store.for_user("support");
  auto admin = store.for_user("admin");
  ASSERT_TRUE(a1.ok() && a2.ok() && admin.ok());
  EXPECT_EQ(*a1, *a2);
  EXPECT_EQ((*a1)->policy().name, "support");
  EXPECT_EQ((*admin)->policy().name, "admins");
  EXPECT_FALSE((*admin)->masks_anything());
  EXPECT_EQ((*a1)->protection().catalog().generation, 1U);

  ASSERT_TRUE(store.refresh().ok());
  EXPECT_EQ(store.generation(), 2U);
  auto b = store.for_user("support");
  ASSERT_TRUE(b.ok());
  EXPECT_NE(*b, *a1);
  EXPECT_EQ((*b)->protection().catalog().generation, 2U);
  EXPECT_EQ(&(*b)->protection(), store.protection().get());
}

TEST(PolicyStoreTest, AFailedRefreshKeepsThePreviousCatalog) {
  FakeLoader fake;
  PolicyStore store(shop_masking(), 60s, fake.loader());
  ASSERT_TRUE(store.refresh().ok());
  auto protection = store.protection();
  auto policy = store.for_user("support");
  fake.fail = true;
  auto st = store.refresh();
  ASSERT_FALSE(st.ok());
  EXPECT_EQ(st.error().sqlstate, sqlstate::connection_failure);
  EXPECT_EQ(store.generation(), 1U);
  EXPECT_EQ(store.protection(), protection);
  auto again = store.for_user("support");
  ASSERT_TRUE(again.ok());
  EXPECT_EQ(*again, *policy);
}

TEST(PolicyStoreTest, ConcurrentRefreshesCoalesce) {
  std::mutex mu;
  std::condition_variable cv;
  bool release = false;
  std::atomic<int> calls{0};
  PolicyStore store(shop_masking(), 60s, [&]() -> Result<std::shared_ptr<rules::Catalog>> {
    if (++calls == 1) {
      std::unique_lock lock(mu);
      cv.wait(lock, [&] { return release; });
    }
    return testing::shop_catalog();
  });
  std::thread first([&] { EXPECT_TRUE(store.refresh().ok()); });
  while (calls.load() == 0) std::this_thread::sleep_for(1ms);
  // Both ask while the first load runs: its snapshot may predate their
  // request, so one more load serves both of them.
  std::thread second([&] { EXPECT_TRUE(store.refresh().ok()); });
  std::thread third([&] { EXPECT_TRUE(store.refresh().ok()); });
  std::this_thread::sleep_for(200ms);
  {
    std::lock_guard lock(mu);
    release = true;
  }
  cv.notify_all();
  first.join();
  second.join();
  third.join();
  EXPECT_EQ(calls.load(), 2);
  EXPECT_EQ(store.generation(), 2U);
}

TEST(PolicyStoreTest, RefresherLoadsAtStartOnRequestAndStops) {
  FakeLoader fake;
  PolicyStore store(shop_masking(), 60s, fake.loader());
  asio::io_context io;
  asio::thread_pool blocking(1);
  asio::co_spawn(io, catalog_refresher(store, blocking), asio::detached);
  std::thread runner([&] { io.run(); });
  auto wait_for = [](auto pred) {
    const auto until = std::chrono::steady_clock::now() + 5s;
    while (!pred() && std::chrono::steady_clock::now() < until) std::this_thread::sleep_for(5ms);
    return pred();
  };
  ASSERT_TRUE(wait_for([&] { return store.generation() == 1; }));
  // Three requests in a row: far sooner than the 60s interval, and coalesced.
  store.request_refresh();
  store.request_refresh();
  store.request_refresh();
  EXPECT_TRUE(wait_for([&] { return store.generation() >= 2; }));
  std::this_thread::sleep_for(400ms);
  EXPECT_EQ(fake.calls.load(), 2);
  // After a failure it retries within about a second, not after 60s.
  fake.fail = true;
  store.request_refresh();
  EXPECT_TRUE(wait_for([&] { return fake.calls.load() >= 4; }));
  EXPECT_EQ(store.generation(), 2U);
  fake.fail = false;
  EXPECT_TRUE(wait_for([&] { return store.generation() == 3; }));
  store.stop();
  runner.join();  // the refresher returned, so the io_context ran out of work
  blocking.join();
}

}  // namespace
}  // namespace pgcloak::proxy
