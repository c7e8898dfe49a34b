//! The binary sets mimalloc's purge delay by the option's number (libmimalloc-sys names the
//! options only for mimalloc v2, and this is v3): check the number still means that option, by
//! its documented default, so that a mimalloc update that renumbers them fails here rather
//! than silently setting some other option.

#[test]
fn the_purge_delay_option_number_names_the_purge_delay() {
    // mimalloc reads its options from the environment when it starts, before this test can
    // unset anything: with the variable set the default can't be seen, so that is a failure to
    // run, never a pass.
    assert!(
        std::env::var_os("MIMALLOC_PURGE_DELAY").is_none(),
        "unset MIMALLOC_PURGE_DELAY to run this test: it checks the option's default"
    );
    // SAFETY: reads an option's value; no allocation is involved.
    let delay = unsafe {
        libmimalloc_sys::mi_option_get(hippo_gitops_controller::memory::MI_OPTION_PURGE_DELAY)
    };
    assert_eq!(delay, 1000, "mimalloc v3's purge_delay defaults to 1000 ms");
    // Its neighbours are not 1000 by default, so an off-by-one shows.
    for other in [
        hippo_gitops_controller::memory::MI_OPTION_PURGE_DELAY - 1,
        hippo_gitops_controller::memory::MI_OPTION_PURGE_DELAY + 1,
    ] {
        // SAFETY: as above.
        assert_ne!(
            unsafe { libmimalloc_sys::mi_option_get(other) },
            1000,
            "option {other}"
        );
    }
}
