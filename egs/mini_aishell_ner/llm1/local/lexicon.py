"""Entity lists and sentence templates for the synthetic mini AISHELL-NER corpus.

Templates are pre-segmented into words (spaces), as AISHELL-1 transcripts are.
Slots: ``{PER}``, ``{LOC}``, ``{ORG}`` are named entities (marked up in the
AISHELL-NER transcript as ``[..]``, ``(..)``, ``<..>``); ``{TIME}``, ``{NUM}`` and
``{TOPIC}`` are plain fillers that let templates yield many distinct sentences;
``{TITLE}`` (introductions only) is the title that fixes the spelling of the name after it.
Every character here is one that espeak-ng's ``cmn-latn-pinyin`` voice reads.
"""

# Person names that espeak-ng's cmn-latn-pinyin voice reads identically (same pinyin, same
# tones, byte-identical audio): the sound alone cannot tell which spelling is meant.
HOMOPHONE_GROUPS: tuple[tuple[str, ...], ...] = (
    ("张伟", "章玮"), ("李娜", "李纳"), ("刘洋", "刘阳", "刘杨"), ("陈静", "陈婧", "陈靖"),
    ("周杰", "周洁"), ("吴琳", "吴霖"), ("孙丽", "孙立", "孙力"), ("林峰", "林枫"),
    ("胡军", "胡君"), ("郑浩", "郑昊"), ("江涛", "姜涛"), ("王芳", "王方"),
)

# The one title each homophone spelling is introduced with ("经理 章玮"), and no other word
# ever is: a story's first sentence fixes the spelling by a pattern a tiny model can learn
# (title -> characters); later sentences say the name bare, so only the history resolves it.
# Titles sound distinct from each other and appear nowhere else in the corpus.
INTRODUCTIONS: dict[str, str] = {
    "张伟": "教授", "章玮": "经理",
    "李娜": "医生", "李纳": "律师",
    "刘洋": "老师", "刘阳": "主任", "刘杨": "书记",
    "陈静": "警官", "陈婧": "护士", "陈靖": "工程师",
    "周杰": "导演", "周洁": "教练",
    "吴琳": "画家", "吴霖": "作家",
    "孙丽": "歌手", "孙立": "演员", "孙力": "司机",
    "林峰": "厨师", "林枫": "秘书",
    "胡军": "博士", "胡君": "法官",
    "郑浩": "主席", "郑昊": "总裁",
    "江涛": "翻译", "姜涛": "设计师",
    "王芳": "助理", "王方": "老板",
}

# Names no other name in the corpus sounds like.
UNAMBIGUOUS_PERSONS: tuple[str, ...] = (
    "杨磊", "赵敏", "黄强", "徐明", "马超", "朱红", "郭涛", "何平", "高鹏", "罗丹",
    "梁宇", "谢婷", "宋佳", "唐亮", "韩雪", "冯刚", "邓超", "曹颖", "彭飞",
    "王建国", "李秀英", "张志强", "刘德华", "陈晓东", "杨丽华", "赵家豪", "黄晓明",
    "周文博", "吴志刚", "徐海燕", "孙建平", "马云飞", "朱晓玲", "胡春华", "郭晶晶",
    "何俊杰", "高志远",
)

PERSONS: tuple[str, ...] = tuple(name for group in HOMOPHONE_GROUPS for name in group) + UNAMBIGUOUS_PERSONS

LOCATIONS: tuple[str, ...] = (
    "北京", "上海", "广州", "深圳", "天津", "重庆", "杭州", "南京", "武汉", "成都",
    "西安", "长沙", "郑州", "济南", "青岛", "大连", "沈阳", "哈尔滨", "长春", "苏州",
    "厦门", "福州", "昆明", "贵阳", "南宁", "海口", "三亚", "拉萨", "兰州", "银川",
    "西宁", "乌鲁木齐", "石家庄", "太原", "合肥", "南昌", "宁波", "无锡", "珠海",
    "香港", "澳门", "台湾", "江苏", "浙江", "广东", "四川", "云南", "山东",
    "日本", "美国", "法国", "德国", "英国",
)

ORGANIZATIONS: tuple[str, ...] = (
    "清华大学", "北京大学", "复旦大学", "浙江大学", "南京大学", "武汉大学", "中山大学",
    "同济大学", "中国银行", "工商银行", "建设银行", "农业银行", "招商银行", "北京银行",
    "国家统计局", "国务院", "发改委", "教育部", "外交部", "财政部", "商务部", "证监会",
    "中国移动", "中国联通", "中国电信", "华为公司", "阿里巴巴", "腾讯公司", "百度公司",
    "小米公司", "联想集团", "万科集团", "中国石油", "中国石化", "国家电网", "新华社",
    "人民日报", "中央电视台", "中国科学院", "中国足协", "国家旅游局", "中原地产",
)

ENTITY_TYPES: dict[str, tuple[str, ...]] = {
    "PER": PERSONS,
    "LOC": LOCATIONS,
    "ORG": ORGANIZATIONS,
}

FILLERS: dict[str, tuple[str, ...]] = {
    "TIME": (
        "今天", "明天", "昨天", "上午", "下午", "晚上", "周末", "下周", "最近",
        "今年", "去年", "明年", "上个月", "下个月",
    ),
    "NUM": ("两", "三", "四", "五", "六", "七", "八", "九", "十", "十二"),
    "TOPIC": (
        "教育", "经济", "交通", "环境", "科技", "文化", "体育", "医疗", "农业", "金融",
        "旅游", "住房",
    ),
}

TEMPLATES: tuple[str, ...] = (
    # one entity
    "{PER} 明天 要 去 {LOC} 出差",
    "{ORG} 发布 了 新 的 年度 报告",
    "记者 从 {ORG} 了解 到 相关 情况",
    "{LOC} 的 房价 {TIME} 出现 上涨",
    "{PER} 毕业 于 {ORG}",
    "{PER} 说 他 很 喜欢 {LOC}",
    "据 {ORG} 最新 数据 显示",
    "{LOC} 的 天气 {TIME} 比较 好",
    "游客 们 纷纷 来到 {LOC} 旅游",
    "{ORG} 的 股价 {TIME} 大幅 下跌",
    "{PER} 打算 报考 {ORG}",
    "{LOC} 警方 正在 调查 此事",
    "{TIME} {LOC} 将 举办 国际 博览会",
    "{PER} 在 会上 介绍 了 经验",
    # two entities
    "{TIME} {PER} 在 {LOC} 参加 了 会议",
    "{PER} 是 {ORG} 的 研究员",
    "{PER} 和 {PER} 一起 去 了 {LOC}",
    "{ORG} 在 {LOC} 开设 了 分公司",
    "{PER} 代表 {ORG} 出席 了 活动",
    "{ORG} 宣布 与 {ORG} 开展 合作",
    "{PER} 表示 {LOC} 的 经济 发展 很快",
    "{LOC} 和 {LOC} 之间 开通 了 高铁",
    "{PER} 在 {ORG} 工作 了 {NUM} 年",
    "{TIME} {PER} 将 前往 {LOC} 访问",
    "{ORG} 计划 {TIME} 在 {LOC} 招聘",
    "{PER} 向 {ORG} 提交 了 申请",
    "{PER} 获得 了 {ORG} 的 奖学金",
    "{PER} 的 家 在 {LOC} 附近",
    "{PER} 对 {PER} 的 发言 表示 赞同",
    # three entities
    "{ORG} 的 负责人 {PER} 接受 了 采访",
    "{PER} 从 {LOC} 回到 了 {LOC}",
    "{PER} 代表 {ORG} 访问 了 {LOC}",
    "{ORG} 和 {ORG} 在 {LOC} 签约",
    "{PER} 邀请 {PER} 参观 {ORG}",
    "{LOC} 的 {ORG} 聘请 {PER} 担任 顾问",
    # a person again, as later sentences of a story say it
    "听说 {PER} {TIME} 很 忙",
    "{PER} 的 {TOPIC} 报告 写 得 很 好",
    "{TIME} {PER} 请 大家 吃饭",
    "{PER} {TIME} 又 去 了 {LOC}",
    "{PER} 觉得 {TOPIC} 问题 很 重要",
    # no entity
    "{TIME} 市场 成交量 明显 增加",
    "我们 {TIME} 一起 去 吃饭 吧",
    "这个 问题 需要 认真 研究",
    "{TIME} 的 {TOPIC} 会议 推迟 到 下午",
    "专家 认为 {TOPIC} 领域 还 有 很 大 潜力",
    "{TIME} {TOPIC} 行业 发展 势头 良好",
    "关于 {TOPIC} 的 讨论 持续 了 {NUM} 天",
    "大家 都 觉得 这 部 电影 很 好看",
    "{TIME} 要 下雨 记得 带 伞",
    "房价 {TIME} 保持 平稳 运行",
    "公司 {TIME} 招聘 了 {NUM} 名 员工",
    "他 在 这里 住 了 {NUM} 年",
)

# A story's first sentence: exactly one person, said with its title right before it.
INTRO_TEMPLATES: tuple[str, ...] = (
    "{TITLE} {PER} 明天 要 去 {LOC} 出差",
    "{ORG} 的 {TITLE} {PER} 接受 了 采访",
    "{TIME} {TITLE} {PER} 来到 了 {LOC}",
    "{TITLE} {PER} 在 {ORG} 工作 了 {NUM} 年",
    "{TIME} 我 见到 了 {TITLE} {PER}",
    "我们 请 来 了 {LOC} 的 {TITLE} {PER}",
    "{TITLE} {PER} 谈 了 谈 {TOPIC} 问题",
    "欢迎 {TITLE} {PER} 来 {ORG} 指导 工作",
    "{TITLE} {PER} 负责 {TOPIC} 方面 的 工作",
    "{TIME} {TITLE} {PER} 在 {LOC} 开会",
    "这 位 是 {ORG} 的 {TITLE} {PER}",
)
